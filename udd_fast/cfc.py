"""The class prototypes of UDD's category-wise feature contrastive (CFC) loss (method section 2); the
loss itself is `ops.cfc_loss`."""
import torch
import torch.nn.functional as F


def prototypes_ref(real_features: torch.Tensor) -> torch.Tensor:
    """[K, D] L2-normalized mean feature of each class's augmented real batch ([K, B, D]), no gradient."""
    return F.normalize(real_features.detach().mean(1), dim=1)
