"""ditkit's own files: training checkpoints (`.pt`, tensors + plain containers only) and weights-only
safetensors files with the model config in their metadata.

Nothing here unpickles code: every `torch.load` runs with `weights_only=True`, and files are written
atomically (temporary file in the same folder, fsync, then rename), so a crash mid-write leaves the previous
file intact.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..models import DiT

CHECKPOINT_FORMAT = "ditkit-checkpoint"
CHECKPOINT_VERSION = 1
SAFETENSORS_FORMAT = "ditkit-safetensors"


# -- writing files and output folders --------------------------------------------------------------
_OS_REASONS = {
    errno.ENOSPC: "no space left on {device}",
    errno.EDQUOT: "disk quota exceeded on {device}",
    errno.EROFS: "{device} is a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a parent of it is a file, not a folder",
    errno.EEXIST: "a file is in the way",
}


def _mount_point(path: Path) -> str:
    """The mount point holding `path` (or its nearest existing parent), for 'no space left on /data'."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        dev = p.stat().st_dev
        while p != p.parent and p.parent.stat().st_dev == dev:
            p = p.parent
    except OSError:
        pass
    return str(p)


def output_error(err: OSError, path: str | os.PathLike, action: str = "cannot write") -> ValueError:
    """A one-line ValueError for an OSError met while writing `path` (full disk, read-only, no permission)."""
    reason = _OS_REASONS.get(err.errno or -1)
    if reason is None:
        reason = (err.strerror or str(err) or type(err).__name__).strip().splitlines()[0]
    else:
        reason = reason.format(device=_mount_point(Path(path)))
    keep = "; the previous file is kept" if action == "cannot write" and Path(path).is_file() else ""
    return ValueError(f"{path}: {action}: {reason}{keep}")


def prepare_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create the folder `path` (and parents) and check that files can be written in it, or raise a
    one-line ValueError: a file is in the way, a read-only file system, no permission. `what` names the
    option in messages ("--out", "--output-dir")."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: {what} must be a folder, but a file is there; pick another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{path}: cannot create {what}: a parent of it is a file, not a folder") from None
    except OSError as err:
        raise output_error(err, path, f"cannot create {what}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".ditkit-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise output_error(err, path, f"cannot write into {what}") from None
    return path


def _nearly_full(folder: Path, margin: int = 1 << 20) -> bool:
    """Whether the file system of `folder` has (almost) no space left for an unprivileged writer."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < margin


def _file_mode() -> int:
    """What open() would give a new file under the current umask (mkstemp makes 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync, then rename over `path`: readers see the old file or the new one.

    The file gets the permissions of an ordinary new file (the umask applies). A full disk, a read-only file
    system or a missing permission is a one-line ValueError naming the file; the previous file is kept."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a folder is in the way of the file to write; pick another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{path}: cannot write: a parent of it is a file, not a folder") from None
    except OSError as err:
        raise output_error(err, path) from None
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        if err.errno in _OS_REASONS:
            raise output_error(err, path) from None
        raise
    except Exception as err:  # torch.save / safetensors wrap (or hide) the OS error of a failed write
        text = str(err).lower()
        for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            if os.strerror(code).lower() in text or f"os error {code})" in text:
                raise output_error(OSError(code, os.strerror(code)), path) from None
        if _nearly_full(path.parent):  # torch.save says only "unexpected pos 704 vs 598"
            raise output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


# -- checksums of the weights ---------------------------------------------------------------------
CHECKSUM_KEY = "weights_sha256"


def weights_checksum(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors (sorted by name): what
    ditkit stores beside the weights in every file it writes, and checks on load."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{str(t.dtype).replace('torch.', '')}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))  # no copy
    return h.hexdigest()


def verify_checksum(state: Mapping[str, torch.Tensor], expected: str | None, where: str) -> bool:
    """Check `state` against the checksum its file stored (`expected`; None = a file from before checksums:
    nothing to check, returns False). A mismatch is a one-line ValueError naming the damaged file."""
    if expected is None:
        return False
    if not isinstance(expected, str) or weights_checksum(state) != expected:
        raise ValueError(
            f"{where}: the file is damaged: its weights do not match the checksum stored with them (a changed "
            "byte, an incomplete copy or a disk error); restore it from a good copy"
        )
    return True


# -- safe loading -----------------------------------------------------------------------------------
_GLOBAL_RE = re.compile(r"GLOBAL\s+([\w.]+)")


def _pickle_globals(path: Path, limit: int = 1 << 20) -> list[str]:
    """The names a plain pickle would import (read with pickletools, which never runs anything)."""
    import pickletools

    names: list[str] = []
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit)
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a junk or truncated stream: report what was seen so far
        pass
    return names


def _refusal(path: Path, name: str | None) -> ValueError:
    what = f" ({name})" if name else ""
    return ValueError(
        f"{path}: refused to load: the file holds pickled Python objects{what} that could run code; ditkit "
        "reads only tensors and plain containers (convert the file with trusted code, e.g. to safetensors)"
    )


def safe_torch_load(path: str | os.PathLike) -> Any:
    """torch.load on CPU with weights_only=True and one-line errors for every way a file can be bad."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive; legacy torch files and plain pickles start with the PROTO opcode.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ValueError(
            f"{path}: not a readable checkpoint (not a PyTorch file; empty, corrupt or another format)"
        )
    try:
        with warnings.catch_warnings():  # junk that starts like a pickle makes torch warn before it fails
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        found = _GLOBAL_RE.search(text)
        # Only a refused global means "this pickle would import code"; other weights-only errors mean junk.
        if found or "Unsupported global" in text:
            raise _refusal(path, found.group(1) if found else None) from None
        if head[:1] == b"\x80":
            names = [n for n in _pickle_globals(path) if not n.startswith(("torch.", "collections."))]
            if names:
                raise _refusal(path, names[0]) from None
            raise ValueError(
                f"{path}: not a readable checkpoint (a plain pickle the safe loader cannot read, or a corrupt "
                "file); re-save it with torch.save(state_dict) or as safetensors"
            ) from None
        raise ValueError(f"{path}: not a readable checkpoint (corrupt or truncated)") from None
    except (
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        AttributeError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        UnicodeDecodeError,
        MemoryError,
    ) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = first.split(". ")[0][:120]
        raise ValueError(f"{path}: not a readable checkpoint (corrupt or truncated: {first})") from None


# -- training checkpoints ---------------------------------------------------------------------------
def is_ditkit_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def checkpoint_checksums(ckpt: Mapping[str, Any]) -> dict[str, str]:
    """{"model": sha, "ema": sha} for the weights of a ditkit checkpoint dict, to store under CHECKSUM_KEY."""
    return {k: weights_checksum(ckpt[k]) for k in ("model", "ema") if isinstance(ckpt.get(k), Mapping)}


def model_from_checkpoint(ckpt: dict[str, Any], *, use_ema: bool = True, path: str = "checkpoint") -> DiT:
    """Rebuild the network held by a ditkit training checkpoint (EMA weights by default), checking the
    config against the tensors and the weights against their stored checksum."""
    from .validate import build_checked_model, config_from_stored

    if not is_ditkit_checkpoint(ckpt):
        raise ValueError(f"{path}: not a ditkit checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    config = config_from_stored(ckpt.get("model_config"), path)
    key = "ema" if use_ema and ckpt.get("ema") is not None else "model"
    state = ckpt.get(key)
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{path}: the checkpoint's {key!r} entry is not a state dict of tensors; the file is damaged"
        )
    sums = ckpt.get(CHECKSUM_KEY)
    if sums is not None:
        if not isinstance(sums, Mapping):
            raise ValueError(f"{path}: its {CHECKSUM_KEY} entry is not a mapping; the file is damaged")
        verify_checksum(state, sums.get(key), f"{path} ({key} weights)")
    return build_checked_model(config, state, path)


# -- safetensors ------------------------------------------------------------------------------------
def save_safetensors(
    model: DiT,
    path: str | os.PathLike,
    *,
    label_names: list[str] | None = None,
    dtype: torch.dtype | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Weights only, config, label names and the weights' checksum as JSON in the safetensors metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().to(dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": SAFETENSORS_FORMAT,
        "model_config": json.dumps(model.config.to_dict()),
        "label_names": json.dumps(label_names),
        CHECKSUM_KEY: weights_checksum(state),
        **(extra or {}),
    }
    return atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; the weights' checksum is verified when the file has one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a safetensors file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path}: not a readable safetensors file (corrupt or truncated: {first[:120]})"
        ) from None
    verify_checksum(state, metadata.get(CHECKSUM_KEY), str(path))
    return state, metadata


def load_safetensors_model(path: str | os.PathLike) -> tuple[DiT, list[str] | None]:
    """Load a file written by `save_safetensors`: (model in eval mode, label names or None)."""
    from .validate import build_checked_model, config_from_stored

    state, metadata = read_safetensors(path)
    if metadata.get("format") != SAFETENSORS_FORMAT or "model_config" not in metadata:
        raise ValueError(f"{path}: a safetensors file without ditkit's model config in its metadata")
    config = config_from_stored(metadata["model_config"], str(path))
    try:
        names = json.loads(metadata.get("label_names", "null"))
    except json.JSONDecodeError:
        raise ValueError(f"{path}: its label names are not valid JSON; the file is damaged") from None
    if names is not None and not isinstance(names, list | dict):
        raise ValueError(
            f"{path}: its label names are a {type(names).__name__}, not a list; the file is damaged"
        )
    return build_checked_model(config, state, str(path)), names
