"""Fairness: how facegate's error rates differ across demographic groups, measured as NIST does.

``audit`` measures per-group false-match and false-non-match rates on a labelled dataset; ``aclu`` reruns the
ACLU's 2018 test (members of Congress searched against a gallery of other people). Both write report.json,
report.html and summary.md. The command line is ``fairness_app`` in ``commands``.
"""
