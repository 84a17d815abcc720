#!/usr/bin/env python
"""Which of timm's ConvNets does legr prune correctly, which does it refuse, and where is it wrong?

The same checks, rows and files as `torchvision_tally.py` (read its docstring: *handled* = random plans pruned
physically equal the masked original, the pruned model trains, MACs and parameters equal torch's own counts;
*refused* = a one-line `UnsupportedModelError` before anything is modified; *failing* = anything else), over one or
two small members of each timm ConvNet family (`timm:<name>`, random init, never downloaded; pure transformers left
out). Needs timm (`pip install -e ".[timm]"`).

Results: benchmarks/results/timm_tally.{md,json} (``{"models": [{"name", "status", "reason"}], "rows": [...]}``),
rewritten after every model.

``--unseen``: the second list (issue 32), ConvNets the engine was not developed against, picked by the rule of
`select_unseen` (written down before it was first run): benchmarks/results/timm_tally_unseen.{md,json}, and the
selection itself (every family's candidates and pick) in benchmarks/results/timm_tally_unseen_selection.json.

Examples:
  nice -n 10 .venv/bin/python benchmarks/timm_tally.py
  nice -n 10 .venv/bin/python benchmarks/timm_tally.py --unseen
  .venv/bin/python benchmarks/timm_tally.py --models timm:efficientnet_b0 timm:cspresnet50 --out /tmp/tally
"""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torchvision_tally import REPO, SMALL_INPUT, Zoo, main  # noqa: E402

from legr.paths import atomic_write_text  # noqa: E402

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


# --- the second list (issue 32): models the engine was not developed against ---------------------------------------
# THE RULE, written down before it was first run:
#   For every module of timm that defines models (`timm.list_modules()`: one family each, e.g. `resnet`, `hgnet`,
#   `efficientvit_mit`), take its smallest model by parameter count (as built by `timm.create_model(name)` with
#   default arguments, on the meta device), among the models that
#     (1) are ConvNets: at least 5 `nn.Conv2d` modules (any subclass) with a kernel larger than 1x1 that is not a
#         patch embedding (kernel == stride): pure transformers and MLPs have at most their patch embedding;
#     (2) are not named in the first list (FAMILIES) nor anywhere in tests/*.py as a string literal (with or
#         without the `timm:` prefix): the models the engine was developed and tested against;
#   ties broken by name. A module with no such model contributes none; a model that cannot be built on the meta
#   device is left out (counted in the selection file). Input: 64x64, or the model's default input size when its
#   timm config says `fixed_input_size`.
# AMENDED after the first run (commit c9b1e14, whose results it keeps in git history), for the input size only (the
# picks are unchanged): a model whose forward rejects 64x64 on the meta device (inception_v4 and
# inception_resnet_v2 shrink it below their kernels) is checked at its default input size, as the first list does
# for inception_v3.
def _conv_net(model) -> bool:
    from torch import nn

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1
             and tuple(m.kernel_size) != tuple(m.stride)]
    return len(convs) >= 5


def _tested_names(known: set[str]) -> set[str]:
    found = set()
    for path in sorted((REPO / "tests").glob("*.py")):
        for name in re.findall(r"""["'](?:timm:)?([A-Za-z0-9_.]+)["']""", path.read_text()):
            if name in known:
                found.add(name)
    return found


SELECTION = REPO / "benchmarks" / "results" / "timm_tally_unseen_selection.json"


@functools.lru_cache(maxsize=1)
def select_unseen() -> tuple[str, ...]:
    """The second list by the rule above, applied once: the picks of the committed selection file when it was made
    with this timm version (tests added later must not change the list), else the rule is applied and every
    family's candidates and pick written to that file."""
    import timm
    import torch

    if SELECTION.is_file():
        saved = json.loads(SELECTION.read_text())
        if saved.get("timm") == timm.__version__:
            return tuple(saved["picks"])
    known = set(timm.list_models())
    excluded = set(FAMILIES) | _tested_names(known)
    families, picks = {}, []
    for module in timm.list_modules():
        candidates, unbuilt = [], []
        for name in sorted(timm.list_models(module=module)):
            if name in excluded:
                continue
            try:
                with torch.device("meta"):
                    model = timm.create_model(name)
            except Exception as exc:  # noqa: BLE001  (the rule leaves it out, recorded)
                unbuilt.append(f"{name}: {type(exc).__name__}")
                continue
            if _conv_net(model):
                candidates.append((sum(p.numel() for p in model.parameters()), name))
            del model
        candidates.sort()
        pick = candidates[0][1] if candidates else None
        families[module] = {"pick": pick, "params": candidates[0][0] if candidates else None,
                            "convnets": len(candidates), "unbuilt": unbuilt}
        if pick:
            picks.append(pick)
    selection = {"rule": "the smallest ConvNet (>= 5 Conv2d with a kernel > 1x1, not kernel == stride) of every timm "
                         "module by parameter count, not in the first list nor named in tests/",
                 "timm": timm.__version__, "excluded": sorted(excluded), "picks": picks, "families": families}
    atomic_write_text(SELECTION, json.dumps(selection, indent=1) + "\n")
    return tuple(picks)


def _fixed_size(name: str) -> int:
    import timm
    import torch

    arch = name.split(":", 1)[-1]
    cfg = timm.get_pretrained_cfg(arch)
    if cfg is not None and getattr(cfg, "fixed_input_size", False):
        return int(cfg.input_size[-1])
    try:
        with torch.device("meta"), torch.no_grad():
            timm.create_model(arch).eval()(torch.empty(1, 3, SMALL_INPUT, SMALL_INPUT))
    except Exception:  # noqa: BLE001  (too small for the model: its own size)
        return int(cfg.input_size[-1]) if cfg is not None else 224
    return SMALL_INPUT


class _UnseenZoo(Zoo):
    def input_size(self, name: str) -> int:
        return _fixed_size(name)


UNSEEN = _UnseenZoo("timm ConvNets not developed against (one per timm family, by a rule written beforehand)",
                    lambda: [f"timm:{n}" for n in select_unseen()], (), "timm_tally_unseen")

if __name__ == "__main__":
    unseen = "--unseen" in sys.argv[1:]
    argv = [a for a in sys.argv[1:] if a != "--unseen"]
    raise SystemExit(main(argv, zoo=UNSEEN if unseen else TIMM, description=__doc__))
