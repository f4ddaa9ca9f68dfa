"""How a file or folder being written is named before it is renamed into place (io_utils.temporary_name:
`.<stem>.tmp-<8 hex><ext>`), and the name it was to take. Apart from io_utils so that errors.py, which
io_utils imports, can name the file a failed write was for without a circle."""
from __future__ import annotations

import re

# temporary_name's (and temporary_folder_name's) pattern: what a process killed while writing leaves
TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.tmp-[0-9a-f]{8}(\.[^.]+)?$")


def final_name(path: str) -> str:
    """The name a temporary file or folder (and one inside a temporary folder) was to take: what a user
    knows the file by."""
    parts = [(match["stem"] + (match.group(2) or "")) if (match := TEMPORARY.match(part)) else part
             for part in str(path).split("/")]
    return "/".join(parts)
