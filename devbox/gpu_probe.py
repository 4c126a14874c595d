"""Run inside the box by `devbox verify`: torch, CUDA and NCCL facts as one JSON line.

Standalone on purpose (it is sent over SSH and run by the box's python).
"""
import json
import os
import sys
import tempfile


def _allreduce_worker(rank, world, init_file, results):
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    tensor = torch.full((1024,), float(rank + 1), device="cuda")
    dist.all_reduce(tensor)
    torch.cuda.synchronize()
    results[rank] = float(tensor[0].item())
    dist.destroy_process_group()


def nccl_allreduce(world):
    import torch.multiprocessing as mp

    manager = mp.Manager()
    results = manager.dict()
    init_file = os.path.join(tempfile.mkdtemp(), "init")
    mp.spawn(_allreduce_worker, args=(world, init_file, results), nprocs=world, join=True)
    expected = world * (world + 1) / 2
    values = [results.get(r) for r in range(world)]
    return {"nccl_ok": all(v == expected for v in values),
            "nccl": {"world": world, "expected": expected, "got": values, **limits()}}


def limits():
    """The limits NCCL's transports depend on, as this process (the login) has them."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    shm = os.statvfs("/dev/shm")
    return {"memlock_kib": "unlimited" if soft == resource.RLIM_INFINITY else soft // 1024,
            "shm_kib": shm.f_blocks * shm.f_frsize // 1024}


def main():
    report = {"limits": limits()}
    try:
        import torch
    except Exception as exc:  # report, never crash: verify turns this into a failed check
        print(json.dumps({"error": f"torch import failed: {exc}"}))
        return
    report["torch"] = torch.__version__
    report["cuda"] = torch.version.cuda
    report["cuda_available"] = torch.cuda.is_available()
    report["device_count"] = torch.cuda.device_count()
    if report["cuda_available"] and report["device_count"]:
        report["devices"] = [torch.cuda.get_device_name(i) for i in range(report["device_count"])]
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(256, 256, generator=gen)
        b = torch.randn(256, 256, generator=gen)
        expected = (a.double() @ b.double()).float()
        got = (a.cuda() @ b.cuda()).cpu()
        err = float((got - expected).abs().max())
        report["matmul_max_abs_err"] = err
        report["matmul_ok"] = bool(torch.allclose(got, expected, rtol=1e-3, atol=1e-2))
        report["matmul_checksum_gpu"] = float(got.sum())
        report["matmul_checksum_cpu"] = float(expected.sum())
        if report["device_count"] > 1:
            try:
                report.update(nccl_allreduce(report["device_count"]))
            except Exception as exc:
                report.update(nccl_ok=False, nccl=f"{exc.__class__.__name__}: {exc}")
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
