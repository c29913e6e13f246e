"""Structured logging: every record is one JSON object per line (request lines carry their fields)."""
from __future__ import annotations

import json
import logging
import sys
import time

ACCESS_LOGGER = "glmserve.access"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
                 "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time, not the stream it was when logging was set up:
    a server started inside another program (tests, an embedding app) outlives a replaced stderr."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ and setStream assign it
        pass


def configure_logging(level: str = "info") -> None:
    handler = StderrHandler()
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # glmserve.access writes one line per request


def log_request(fields: dict, probe: bool) -> None:
    logging.getLogger(ACCESS_LOGGER).log(logging.DEBUG if probe else logging.INFO, "request",
                                         extra={"fields": fields})
