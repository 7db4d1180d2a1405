"""The `leaf_cert` object of a message, as a client reads it from the full-stream payload."""

from __future__ import annotations

import json
from typing import Any

from certlake.certs.message import CertMessage


def leaf_cert(message: CertMessage) -> dict[str, Any]:
    leaf: dict[str, Any] = json.loads(message.full)["data"]["leaf_cert"]
    return leaf
