#!/usr/bin/env python
"""Which of timm's ConvNets does legr prune correctly, which does it refuse, and where is it wrong?

The same checks, rows and files as `torchvision_tally.py` (read its docstring: *handled* = random plans pruned
physically equal the masked original, the pruned model trains, MACs and parameters equal torch's own counts;
*refused* = a one-line `UnsupportedModelError` before anything is modified; *failing* = anything else), over one or
two small members of each timm ConvNet family (`timm:<name>`, random init, never downloaded; pure transformers left
out). Needs timm (`pip install -e ".[timm]"`).

Results: benchmarks/results/timm_tally.{md,json} (``{"models": [{"name", "status", "reason"}], "rows": [...]}``),
rewritten after every model.

Examples:
  nice -n 10 .venv/bin/python benchmarks/timm_tally.py
  .venv/bin/python benchmarks/timm_tally.py --models timm:efficientnet_b0 timm:cspresnet50 --out /tmp/tally
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torchvision_tally import Zoo, main  # noqa: E402

# The 46 small timm ConvNets of issue #13: one or two per family.
FAMILIES = [
    "resnet18", "resnet26d", "seresnet18", "legacy_seresnet18", "resnext26ts", "res2net50_14w_8s", "dla34",
    "hrnet_w18_small", "selecsls42b", "legacy_xception", "xception41", "inception_v3", "densenet121", "dpn48b", "dpn68",
    "vgg11_bn", "repvgg_a0", "gernet_s", "regnetx_002", "regnety_002", "efficientnet_b0", "efficientnet_lite0",
    "tinynet_e", "mixnet_s", "mnasnet_small", "semnasnet_050", "spnasnet_100", "fbnetc_100", "hardcorenas_a",
    "mobilenetv3_small_050", "mobilenetv3_large_100", "lcnet_050", "ghostnet_100", "rexnet_100", "cspresnet50",
    "cspdarknet53", "cs3darknet_focus_s", "darknet17", "darknet21", "halonet26t", "botnet26t_256", "mobilevit_xxs",
    "convnext_atto", "nfnet_l0", "nf_resnet26", "resnetv2_50x1_bit",
]

TIMM = Zoo("timm ConvNets", lambda: [f"timm:{n}" for n in FAMILIES],
           ("inception_v3", "halonet", "botnet", "mobilevit"), "timm_tally")

if __name__ == "__main__":
    raise SystemExit(main(zoo=TIMM, description=__doc__))
