"""CI check of the README's recipe for the LPIPS metrics (torch + the torchvision built for it, then
``memlens[lpips]``), run in its own virtual environment by ``.ci/run``.

LPIPS's backbone weights come from torchvision's server, which CI cannot reach: a randomly initialised
backbone in the exact file name torchvision looks for stands in for them (in a temporary ``TORCH_HOME``), so
this checks the installation and memlens's use of the package, not LPIPS's published numbers.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="memlens-lpips-"))
    os.environ["TORCH_HOME"] = str(home)
    import torch
    import torchvision

    import memlens
    from memlens.metrics import LPIPS_BACKBONE_FILES

    # before the weights are there: one clear line, no traceback
    try:
        memlens.get_metric("lpips-squeeze")(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    except memlens.ConfigError as exc:
        assert LPIPS_BACKBONE_FILES["squeeze"] in str(exc), exc
    else:
        raise AssertionError("lpips-squeeze ran without its backbone weights")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), ckpt / LPIPS_BACKBONE_FILES["squeeze"])
    import memlens.metrics as M

    M._LPIPS_MODELS.clear()
    metric = memlens.get_metric("lpips-squeeze")
    x = torch.rand(2, 3, 64, 64)
    same, other = metric(x, x), metric(x, x.flip(-1))
    assert float(same.abs().max()) < 1e-6 and bool((other > 0).all()), (same, other)
    print(f"lpips recipe: torch {torch.__version__}, torchvision {torchvision.__version__}, lpips-squeeze "
          f"d(x, x) = {float(same.max()):.1e}, d(x, mirrored x) = {other.tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
