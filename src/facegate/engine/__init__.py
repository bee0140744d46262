"""Images in, faces out: decode, detect, landmarks, pose, quality, align and embed."""

from __future__ import annotations

import threading
from pathlib import Path

import dlib
import numpy as np

from facegate.engine.detect import DEFAULT_DETECTOR, Detector, check_detector, make_detector
from facegate.engine.embed import DlibResnet, EmbeddingModel
from facegate.engine.faces import AnalysedImage, Box, Face, Pose, Quality
from facegate.engine.geometry import estimate_pose, face_quality, rekognition_landmarks
from facegate.engine.image import DEFAULT_MAX_BYTES, decode_image
from facegate.engine.models import EMBEDDING_MODEL_VERSION, landmarks5_weights, landmarks68_weights
from facegate.engine.similarity import SimilarityScale, similarity_scale

MAX_FACES_PER_IMAGE = 100
RUNTIMES = ("onnx", "dlib")  # Rekognition detects and stores at most the 100 largest faces

__all__ = ["AnalysedImage", "Box", "Face", "FaceEngine", "Pose", "Quality", "SimilarityScale"]


class FaceEngine:
    """Finds faces and their embeddings. Models load lazily, once, on first use.

    ``detector`` is one of ``detect.DETECTORS`` (``DEFAULT_DETECTOR`` if not given): "hog" (dlib's HOG), "cnn"
    (dlib's MMOD CNN in int8: finds more faces), "cnn-float" (that CNN with dlib's float32 arithmetic, slower)
    or "cnn-dlib" (that CNN run by dlib, slowest). The embedding
    network is dlib's ResNet, run by ONNX Runtime (``runtime="onnx"``, default: same embeddings as dlib within
    1e-6, ~20× faster) or by dlib itself (``runtime="dlib"``, the reference); ``threads`` caps ONNX Runtime's
    threads (give 1 per process when several processes share the cores); ``model_cache`` is where the converted
    network is kept. ``embedding_model`` replaces the network altogether (e.g. an ONNX model a user supplies).
    """

    def __init__(
        self,
        detector: str = DEFAULT_DETECTOR,
        embedding_model: EmbeddingModel | None = None,
        max_image_bytes: int = DEFAULT_MAX_BYTES,
        runtime: str = "onnx",
        threads: int | None = None,
        model_cache: Path | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"Unknown embedding runtime {runtime!r}: choose {' or '.join(RUNTIMES)}.")
        self.detector_name = check_detector(detector)
        self.max_image_bytes = max_image_bytes
        self.runtime = runtime
        self.threads = threads
        self.model_cache = model_cache
        self._embedding_model = embedding_model
        self._detector: Detector | None = None
        self._shape5 = None
        self._shape68 = None
        self._load_lock = threading.Lock()

    def _load(self) -> None:
        with self._load_lock:
            if self._detector is None:
                self._shape5 = dlib.shape_predictor(str(landmarks5_weights()))
                self._shape68 = dlib.shape_predictor(str(landmarks68_weights()))
                if self._embedding_model is None:
                    self._embedding_model = self._network()
                self._detector = make_detector(self.detector_name, threads=self.threads)

    def _network(self) -> EmbeddingModel:
        if self.runtime == "dlib":
            return DlibResnet()
        from facegate.engine.onnx_resnet import OnnxResnet

        return OnnxResnet(cache_dir=self.model_cache, threads=self.threads)

    @property
    def embedding_model(self) -> EmbeddingModel:
        if self._embedding_model is None:
            self._load()
        return self._embedding_model

    @property
    def model_version(self) -> str:
        if self._embedding_model is None:
            return EMBEDDING_MODEL_VERSION  # both runtimes run dlib's ResNet: known without loading anything
        return self._embedding_model.version

    @property
    def similarity(self) -> SimilarityScale:
        return similarity_scale(self.model_version)

    def decode(self, data: bytes) -> np.ndarray:
        return decode_image(data, max_bytes=self.max_image_bytes)

    def analyse(self, image: np.ndarray, *, embed: bool = True, max_faces: int = MAX_FACES_PER_IMAGE) -> AnalysedImage:
        """Detect up to ``max_faces`` faces (largest first) with landmarks, pose, quality and embeddings."""
        return self.analyse_many([image], embed=embed, max_faces=max_faces)[0]

    def analyse_many(
        self, images: list[np.ndarray], *, embed: bool = True, max_faces: int = MAX_FACES_PER_IMAGE
    ) -> list[AnalysedImage]:
        """``analyse`` of each image, with one run of the embedding network over the faces of all of them (the
        network is cheaper per face in batches: bulk indexing hands several images at once)."""
        self._load()
        analysed, chips = [], []
        for image in images:
            height, width = image.shape[:2]
            found = sorted(self._detector.detect(image), key=lambda d: d[0].area, reverse=True)[:max_faces]
            faces, image_chips = self._describe(image, [box for box, _ in found], [c for _, c in found])
            analysed.append(AnalysedImage(width=width, height=height, faces=faces))
            chips += image_chips
        if embed:
            self._embed([face for a in analysed for face in a.faces], chips)
        return analysed

    def analyse_box(self, image: np.ndarray, box: Box, *, embed: bool = True) -> Face:
        """Describe the face assumed to fill ``box`` without running the detector (e.g. a tight crop
        whose face the detector missed); confidence is reported as 0."""
        self._load()
        faces, chips = self._describe(image, [box], [0.0])
        if embed:
            self._embed(faces, chips)
        return faces[0]

    def _describe(
        self, image: np.ndarray, boxes: list[Box], confidences: list[float]
    ) -> tuple[list[Face], list[np.ndarray]]:
        """The faces in ``boxes`` with landmarks, pose and quality, and their aligned chips for the network."""
        height, width = image.shape[:2]
        model = self.embedding_model
        faces: list[Face] = []
        chips: list[np.ndarray] = []
        for box, confidence in zip(boxes, confidences, strict=True):
            rect = dlib.rectangle(
                int(round(box.left)), int(round(box.top)), int(round(box.right)) - 1, int(round(box.bottom)) - 1
            )
            shape5 = self._shape5(image, rect)
            points68 = _points(self._shape68(image, rect))
            chip = np.asarray(dlib.get_face_chip(image, shape5, model.chip_size, model.chip_padding))
            chips.append(chip)
            faces.append(
                Face(
                    box=_clip(box, width, height),
                    confidence=confidence,
                    landmarks=rekognition_landmarks(points68),
                    pose=estimate_pose(points68),
                    quality=face_quality(image, box, chip),
                )
            )
        return faces, chips

    def _embed(self, faces: list[Face], chips: list[np.ndarray]) -> None:
        if faces:
            for face, vector in zip(faces, self.embedding_model.embed(chips), strict=True):
                face.embedding = vector

    def analyse_bytes(self, data: bytes, *, embed: bool = True, max_faces: int = MAX_FACES_PER_IMAGE):
        return self.analyse(self.decode(data), embed=embed, max_faces=max_faces)


def _points(shape: dlib.full_object_detection) -> np.ndarray:
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def _clip(box: Box, width: int, height: int) -> Box:
    return Box(max(0.0, box.left), max(0.0, box.top), min(float(width), box.right), min(float(height), box.bottom))
