"""ditkit's Inception-v3, the TensorFlow 2015-12-05 graph that FID, sFID, IS and precision/recall are defined on.

Written here from the published architecture; its parameter names and shapes are those of the torchvision
`Inception3` layout with the FID block variants, so pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
(a plain state dict, 95,628,359 bytes) loads with `weights_only=True`, no torchvision needed.

Differences from torchvision's Inception3, as in the TF graph:
- every 3x3 average pool in the A, C and first E blocks ignores the zero padding (count_include_pad=False);
- the last E block (Mixed_7c) pools its `branch_pool` input with a 3x3 *max* pool;
- 1008 output classes (`fc`), no auxiliary classifier.

Outputs (`FIDInceptionV3.forward`):
- pool (N, 2048): TF `pool_3`, the FID / precision-recall features;
- logits_unbiased (N, 1008): pool @ fc.weight.T. The ADM suite's Inception Score takes the softmax over all
  1008 of these (it multiplies pool_3 by the graph's `softmax/logits/MatMul` weights, without the bias), as
  does torch-fidelity ("logits_unbiased"). ditkit follows that; `logits` adds the bias;
- spatial (N, 2023): TF `mixed_6/conv` for sFID. Mapping: TF's blocks are named mixed, mixed_1, mixed_2 (35x35:
  Mixed_5b/5c/5d), mixed_3 (Mixed_6a), mixed_4 .. mixed_7 (17x17: Mixed_6b/6c/6d/6e), so `mixed_6` is
  Mixed_6d, and its `conv` scope is the first 1x1 branch, `Mixed_6d.branch1x1` (192 channels, 17x17), after
  BN + ReLU. As in ADM, the first 7 channels are kept and flattened in TF's NHWC order (h, w, c), so the
  vector lines up with the `mu_s`/`sigma_s` of ADM reference batches. Doubt: the name-to-module mapping comes
  from a published TF->PyTorch weight conversion table (torch-fidelity's), not from the graph itself; that
  `mixed_6/conv:0` is the post-ReLU tensor (not the BN output) is the TF graph's naming convention, unverified
  here.

Preprocessing (`preprocess`): uint8 images -> float; `resize="tf"` (default) reproduces the graph ADM feeds:
TF1 `ResizeBilinear` to 299 (align_corners=False, *no* half-pixel centres: source = dest * in/out) then
(x - 128) / 128; `resize="pytorch-fid"` is pytorch-fid's bilinear (half-pixel centres) then x / 127.5 - 1.

Checked once (2026-12-01, outside the test suite) against pytorch-fid 0.3.0's InceptionV3 (torch 2.14.1,
torchvision 0.29.1) with identical random weights on 64 px inputs: largest difference 6e-7 in pool (values up
to 2.5), 2.4e-7 in the unbiased logits, 2.9e-6 in the Mixed_6d.branch1x1 features; the "tf" resize against
torch-fidelity's TF1 emulation: 3e-5 on the 0..255 scale.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_BYTES = 95_628_359  # two independent public download checks agree on this size
INPUT_SIZE = 299
RESIZE_MODES = ("tf", "pytorch-fid")


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3) + ReLU; keys `conv.weight`, `bn.{weight,bias,running_*}`."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _chain(block: nn.Module, prefix: str, count: int, x: torch.Tensor) -> torch.Tensor:
    for i in range(1, count + 1):
        x = getattr(block, f"{prefix}_{i}")(x)
    return x


class InceptionA(nn.Module):  # 35x35 (Mixed_5b/5c/5d)
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat(
            [
                self.branch1x1(x),
                _chain(self, "branch5x5", 2, x),
                _chain(self, "branch3x3dbl", 3, x),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class InceptionB(nn.Module):  # 35 -> 17 reduction (Mixed_6a)
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        pool = F.max_pool2d(x, 3, stride=2)
        return torch.cat([self.branch3x3(x), _chain(self, "branch3x3dbl", 3, x), pool], 1)


class InceptionC(nn.Module):  # 17x17 with factorised 7x7 (Mixed_6b..6e)
    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x, with_branch1x1: bool = False):
        b1 = self.branch1x1(x)
        out = torch.cat(
            [
                b1,
                _chain(self, "branch7x7", 3, x),
                _chain(self, "branch7x7dbl", 5, x),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )
        return (out, b1) if with_branch1x1 else out


class InceptionD(nn.Module):  # 17 -> 8 reduction (Mixed_7a)
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        pool = F.max_pool2d(x, 3, stride=2)
        return torch.cat([_chain(self, "branch3x3", 2, x), _chain(self, "branch7x7x3", 4, x), pool], 1)


class InceptionE(nn.Module):  # 8x8 with split 3x3 (Mixed_7b: avg pool, Mixed_7c: max pool)
    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(a),
                self.branch3x3_2b(a),
                self.branch3x3dbl_3a(b),
                self.branch3x3dbl_3b(b),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInceptionV3(nn.Module):
    """The FID Inception network. forward(x): x (N, 3, 299, 299) already preprocessed -> dict of features."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))
        x, mixed_6_conv = self.Mixed_6d(x, with_branch1x1=True)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))
        pool = x.mean(dim=(2, 3))
        unbiased = pool @ self.fc.weight.T
        spatial = mixed_6_conv[:, :7].permute(0, 2, 3, 1).flatten(1)  # TF NHWC order
        return {
            "pool": pool,
            "logits_unbiased": unbiased,
            "logits": unbiased + self.fc.bias,
            "spatial": spatial,
        }


# ------------------------------------------------------------------------------------------------ preprocessing
def _tf1_resize_matrix(n_in: int, n_out: int, dtype, device) -> torch.Tensor:
    """(n_out, n_in) weights of TF1 ResizeBilinear (align_corners=False, no half-pixel centres); the source
    coordinates in float32, as TF computes them."""
    src = torch.arange(n_out, dtype=torch.float32) * torch.tensor(n_in / n_out, dtype=torch.float32)
    lo = src.floor().long().clamp_max(n_in - 1)
    hi = (lo + 1).clamp_max(n_in - 1)
    frac = (src - lo.float()).double()
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(device=device, dtype=dtype)


def preprocess(images: torch.Tensor, resize: str = "tf", size: int | None = None) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 3, size, size) (default 299), resized and scaled as the chosen
    reference tool does."""
    size = INPUT_SIZE if size is None else size
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize!r}; choose one of {', '.join(RESIZE_MODES)}")
    x = images.float()
    h, w = x.shape[-2:]
    if resize == "tf":
        if (h, w) != (size, size):
            x = (
                _tf1_resize_matrix(h, size, x.dtype, x.device)
                @ x
                @ _tf1_resize_matrix(w, size, x.dtype, x.device).T
            )
        return (x - 128.0) / 128.0
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x / 127.5 - 1.0


# ------------------------------------------------------------------------------------------------ weights
def default_weights_path() -> Path:
    """$DITKIT_INCEPTION, else torch hub's cache (where pytorch-fid downloads the file)."""
    if os.environ.get("DITKIT_INCEPTION"):
        return Path(os.environ["DITKIT_INCEPTION"])
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_NAME


def _expected_message() -> str:
    return f"expected pytorch-fid's {WEIGHTS_NAME} ({WEIGHTS_BYTES:,} bytes), a plain state dict"


def load_fid_inception(path: str | os.PathLike | None = None, device="cpu") -> FIDInceptionV3:
    """Build the network and load the FID weights (weights_only); one-line errors for a missing or wrong file."""
    from ditkit.io.native import safe_torch_load

    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no Inception weights file; {_expected_message()} (pass --inception PATH)"
        )
    try:
        state = safe_torch_load(path)
    except ValueError as err:
        raise ValueError(f"{str(err).splitlines()[0]}; {_expected_message()}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors; {_expected_message()}")
    model = FIDInceptionV3()
    check_state_dict(state, model, path)
    model.load_state_dict(state, strict=False)
    return model.eval().requires_grad_(False).to(device)


def check_state_dict(state: dict, model: nn.Module, path) -> None:
    """Same key names (num_batches_tracked optional) and shapes as the network, else a one-line ValueError."""
    own = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    theirs = {k: v.shape for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing, extra = sorted(own.keys() - theirs.keys()), sorted(theirs.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & theirs.keys() if tuple(own[k]) != tuple(theirs[k]))
    if missing or extra or wrong:
        detail = (
            f"{len(missing)} keys missing (e.g. {missing[:1]}), {len(extra)} unexpected (e.g. {extra[:1]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:1]})"
        )
        raise ValueError(f"{path}: not the FID Inception weights: {detail}; {_expected_message()}")
