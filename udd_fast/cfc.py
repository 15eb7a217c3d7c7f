"""UDD's category-wise feature contrastive (CFC) loss (method section 2)."""
import torch
import torch.nn.functional as F


def prototypes_ref(real_features: torch.Tensor) -> torch.Tensor:
    """[K, D] L2-normalized mean feature of each class's augmented real batch ([K, B, D]), no gradient."""
    return F.normalize(real_features.detach().mean(1), dim=1)


def cfc_loss_ref(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, tau: float,
                 reduction: str = "mean") -> torch.Tensor:
    """mean_i -log softmax_k(<z_i, mu_k> / tau)[y_i] with z = L2-normalized features [n, D]
    (reduction='none' gives the per-sample terms)."""
    z = F.normalize(features, dim=1)
    return F.cross_entropy(z @ prototypes.t() / tau, labels, reduction=reduction)
