"""Zero-shot classification (Radford et al., 2021): each image goes to the class whose text embedding is most
similar to its image embedding; no classifier is trained.

    accuracy = zero_shot_accuracy(image_embeddings, labels, class_embeddings)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def zero_shot_accuracy(image_embeddings: torch.Tensor, labels: torch.Tensor,
                       class_embeddings: torch.Tensor) -> float:
    """Top-1 accuracy of the argmax over classes of the cosine similarity.

    image_embeddings: (N, D); labels: int64 (N,) in [0, C); class_embeddings: (C, D) (e.g. CLIP's prompt-ensembled
    class-name embeddings). Neither side needs to be normalised.
    """
    if image_embeddings.dim() != 2 or class_embeddings.dim() != 2 or \
            image_embeddings.shape[1] != class_embeddings.shape[1]:
        raise ValueError(f"image_embeddings (N, D) and class_embeddings (C, D) must share D, got "
                         f"{tuple(image_embeddings.shape)} and {tuple(class_embeddings.shape)}")
    if labels.shape != image_embeddings.shape[:1]:
        raise ValueError(f"labels: expected shape ({image_embeddings.shape[0]},), got {tuple(labels.shape)}")
    similarity = F.normalize(image_embeddings.float(), dim=1) @ F.normalize(class_embeddings.float(), dim=1).T
    return float((similarity.argmax(1).cpu() == labels.cpu()).double().mean())
