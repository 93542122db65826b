# Run with torch 2.13.0+cpu and numpy 2.x, from tests/testdata/torch_saved/.
import numpy as np
import torch

torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
)
sd = net.state_dict()  # float32 conv/linear, int64 num_batches_tracked
base = torch.randn(5, 6)
shared = torch.arange(24, dtype=torch.float16)
sd["extra.half"] = torch.randn(3, 2).half()
sd["extra.bf16"] = torch.randn(7).bfloat16()
sd["extra.transposed"] = base.t()  # non-contiguous view, stride (1, 6)
sd["extra.offset_view"] = shared[5:17].view(3, 4)  # storage offset 5
sd["extra.shared_a"] = shared[:8]  # same storage as offset_view
sd["extra.scalar"] = torch.tensor(2.5, dtype=torch.float64)
sd["extra.mask"] = torch.tensor([True, False, True])
sd["extra.int8"] = torch.tensor([-3, 7], dtype=torch.int8)
torch.save(sd, "state_dict_zip.pt")
torch.save(sd, "state_dict_legacy.pth", _use_new_zipfile_serialization=False)
torch.save({"state_dict": sd, "epoch": 3, "note": "wrapped"}, "wrapped_zip.pt")
torch.save(net, "whole_module.pt")  # must be refused: it pickles torch.nn classes
ref = {}
for k, v in sd.items():
    if v.dtype == torch.bfloat16:
        ref[k] = v.view(torch.int16).numpy().view(np.uint16)  # bits of the bfloat16 values
    else:
        ref[k] = v.contiguous().numpy()
np.savez("expected.npz", **{f"state/{k}": v for k, v in ref.items()}, keys=np.array(list(sd)))
