"""Effective rank (exp entropy of normalised singular values) of centred features on 1000 CIFAR-10 test images."""
import io, sys, numpy as np, torch
from PIL import Image
torch.set_num_threads(1)
from fastssl.eval.evaluate import load_method
from fastssl.train.checkpoint import load_checkpoint
f = np.load("/work/shared/data/cifar10/cifar10_all_jpeg.npz", allow_pickle=True)
idx = np.nonzero(~f["is_train"])[0][:1000]
jb, off = f["jpeg_bytes"], f["offsets"]
imgs = np.stack([np.asarray(Image.open(io.BytesIO(jb[off[i]:off[i+1]].tobytes())).convert("RGB")) for i in idx])
mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1); std = torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)
x = (torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255 - mean) / std

def erank(h):
    h = h - h.mean(0)
    s = torch.linalg.svdvals(h.double())
    p = s / s.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-30).log()).sum())), h.shape[1]

for path in sys.argv[1:]:
    state = load_checkpoint(path)
    m = load_method(state)
    with torch.no_grad():
        h = m.backbone(x)
        out = [f"backbone erank {erank(h)[0]:.1f}/{h.shape[1]}"]
        for name in ("projector", "target_projector"):
            if hasattr(m, name):
                src = m.backbone if name == "projector" else m.target_backbone
                z = getattr(m, name)(src(x))
                out.append(f"{name} erank {erank(z)[0]:.1f}/{z.shape[1]}")
    print(path, state["step"], "; ".join(out))
