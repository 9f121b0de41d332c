"""The paper's layers per architecture, by module path, without torch.

The workflow resolves ``layers: preset`` at every parse (an extraction job's params), so this list
lives apart from :mod:`featdyn.nets.layers`, which needs torch to capture them.
"""

from __future__ import annotations

from featdyn import FeatdynError

# The paper's layers (ReLU outputs at the end of each major component); see docs/design.md, "Layers".
PRESETS: dict[str, list[str]] = {
    # The last ReLU of each of the five blocks: 64x224^2, 128x112^2, 256x56^2, 512x28^2, 512x14^2.
    "vgg19": ["features.3", "features.8", "features.17", "features.26", "features.35"],
    # The stem ReLU, then each stage's last Bottleneck. A Bottleneck's output is its `relu` applied
    # (third call) to the residual sum, so hooking the block captures the post-addition tensor
    # (the same as `layer1.2.relu@3`; a plain hook on `layer1.2.relu` is refused).
    "resnet50": ["relu", "layer1.2", "layer2.3", "layer3.5", "layer4.2"],
    # torchvision nests the blocks under `features`; relu2 is the 128-channel bottleneck ReLU of the
    # last dense layer of each block (called once per pass), in forward order with the transitions.
    "densenet121": ["features.denseblock1.denselayer6.relu2", "features.transition1.relu",
                    "features.denseblock2.denselayer12.relu2", "features.transition2.relu",
                    "features.denseblock3.denselayer24.relu2", "features.transition3.relu",
                    "features.denseblock4.denselayer16.relu2"],
    # The demo model, mapped onto ResNet's choice: the stem Conv-BN-ReLU6 (32x112^2), the last block
    # of each resolution stage (after its residual addition: 24x56^2, 32x28^2, 96x14^2; these blocks
    # end linearly, MobileNetV2 has no ReLU there) and the last Conv-BN-ReLU6 (1280x7^2).
    "mobilenet_v2": ["features.0", "features.3", "features.6", "features.13", "features.18"],
}


def preset(arch: str) -> list[str]:
    if arch not in PRESETS:
        raise FeatdynError(f"no layer preset for model {arch!r} (presets exist for {sorted(PRESETS)}); "
                           f"give `layers:` as a list of module paths")
    return list(PRESETS[arch])
