"""The Rekognition-compatible HTTP service: AWS JSON 1.1 on POST /, SigV4, health and metrics."""
