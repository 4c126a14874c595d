"""base_image = "auto", explicit bases, GPUs by UUID and the NCCL runtime limits: pure, from
nvidia-smi output recorded on real hosts (tests/fixtures) and synthetic hosts written like it."""
from pathlib import Path

import pytest

from devbox.basetag import AUTO, Arch, choose, load_table, problems, refuse_unworkable
from devbox.config import BoxSpec, ConfigError, load_spec
from devbox.errors import HostUnreachable
from devbox.facts import MARK, Facts, gpu_script, parse_facts, parse_memlock
from devbox.plan import memlock_ulimit, plan_up, run_args, shm_size

FIXTURES = Path(__file__).parent / "fixtures"
TAG = "devbox-ssh:abc"
KEYS = "# header\nrestrict ssh-ed25519 AAAA alice\n"
H100_UUID = "GPU-46748a73-18ca-02c2-e029-6e440dca4aa4"


def host(query: str, banner: str, **kw) -> Facts:
    """Facts as the gather reads them from a host's two nvidia-smi answers."""
    text = f"\n{MARK} gpus\n{query}\n{MARK} smi\n{banner}\n"
    facts = parse_facts(text)
    for key, value in {**dict(docker_version="27.0", docker_root_free_kib=50 << 20, image_present=True, base_present=True,
                              host_checked=True, runtimes=("nvidia", "runc"), host_memory=128 << 30, host_cpus=16), **kw}.items():
        setattr(facts, key, value)
    return facts


def smi_banner(driver: str, cuda: str) -> str:
    return f"| NVIDIA-SMI {driver}             Driver Version: {driver}     CUDA Version: {cuda}     |"


H100 = host((FIXTURES / "nvidia-smi-query-gpu-h100.csv").read_text(), (FIXTURES / "nvidia-smi-h100.txt").read_text())
# The 2×H200 host as recorded (old query: no UUID, no compute capability) ...
H200X2_OLD = host((FIXTURES / "nvidia-smi-query-h200x2.csv").read_text(), (FIXTURES / "nvidia-smi-h200x2.txt").read_text())
# ... and as the new query reads it (synthetic UUIDs; the H200 is sm_90).
H200X2 = host("0, GPU-11111111-2222-3333-4444-555555555555, NVIDIA H200, 580.159.04, 143771, 9.0\n"
              "1, GPU-66666666-7777-8888-9999-000000000000, NVIDIA H200, 580.159.04, 143771, 9.0",
              (FIXTURES / "nvidia-smi-h200x2.txt").read_text())
OLD_DRIVER = host("0, GPU-0a0a0a0a-0000-0000-0000-000000000001, NVIDIA A100-SXM4-80GB, 535.104.05, 81920, 8.0",
                  smi_banner("535.104.05", "12.2"))
RTX5090 = host("0, GPU-0b0b0b0b-0000-0000-0000-000000000002, NVIDIA GeForce RTX 5090, 570.124.06, 32607, 12.0",
               smi_banner("570.124.06", "12.8"))
RTX5090_OLD_DRIVER = host("0, GPU-0b0b0b0b-0000-0000-0000-000000000002, NVIDIA GeForce RTX 5090, 560.35.03, 32607, 12.0",
                          smi_banner("560.35.03", "12.6"))
MIXED = host("0, GPU-0c0c0c0c-0000-0000-0000-000000000003, Tesla V100-SXM2-32GB, 580.65.06, 32768, 7.0\n"
             "1, GPU-0d0d0d0d-0000-0000-0000-000000000004, NVIDIA GeForce RTX 5090, 580.65.06, 32607, 12.0",
             smi_banner("580.65.06", "13.0"))
NO_GPU = host((FIXTURES / "nvidia-smi-no-driver.txt").read_text(), "")


def auto(facts: Facts, gpus="all", current: str = "") -> str:
    return choose(BoxSpec("h", gpus=gpus), facts, current).tag


def test_the_recorded_h100_reads_uuid_capability_and_driver_cuda():
    (gpu,) = H100.gpus
    assert (gpu.uuid, gpu.compute_cap, gpu.driver, H100.driver_cuda) == (H100_UUID, "9.0", "580.159.04", "13.0")


def test_h100_on_a_cuda_13_driver_gets_the_newest_torch_on_cuda_13():
    assert auto(H100) == "pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime"
    assert "CUDA 13.0" in choose(BoxSpec("h"), H100).why and "sm_90" in choose(BoxSpec("h"), H100).why


def test_two_h200_get_the_same_and_the_old_query_without_capability_still_chooses_by_driver():
    assert auto(H200X2) == auto(H200X2_OLD) == "pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime"
    assert [g.compute_cap for g in H200X2_OLD.gpus] == ["", ""]


def test_an_old_driver_gets_an_image_of_a_cuda_it_runs():
    # CUDA 12.2 at most: 12.4 and newer are out (minor-version compatibility is not relied on);
    # the newest torch wins over the newest CUDA: 2.7.1 on CUDA 11.8 beats 2.5.1 on CUDA 12.1.
    assert auto(OLD_DRIVER) == "pytorch/pytorch:2.7.1-cuda11.8-cudnn9-runtime"


def test_an_sm_120_card_gets_a_build_with_blackwell_kernels():
    assert auto(RTX5090) == "pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime"


def test_an_sm_120_card_on_a_driver_below_cuda_12_8_is_refused_with_the_remedy():
    with pytest.raises(HostUnreachable) as err:
        choose(BoxSpec("h"), RTX5090_OLD_DRIVER)
    assert err.value.exit_code == 3 and "sm_120" in err.value.message and "CUDA 12.6" in err.value.message
    assert "upgrade the NVIDIA driver" in err.value.remedy


def test_mixed_volta_and_blackwell_need_one_build_with_both_kernels():
    # 2.11 dropped sm_70 from CUDA 12.8 and CUDA 13 never had it: 2.10 on CUDA 12.8 has both.
    assert auto(MIXED) == "pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime"
    only_blackwell = choose(BoxSpec("h", gpus=(1,)), MIXED)
    assert only_blackwell.tag == "pytorch/pytorch:2.10.0-cuda12.8-cudnn9-runtime", "every GPU of the host counts"


def test_no_gpus_asked_keeps_the_newest_image_and_says_why():
    choice = choose(BoxSpec("h", gpus="none"), None)
    assert choice.tag == load_table()[0].tag and "CPU" in choice.why


def test_gpus_asked_on_a_host_without_a_driver_leaves_the_refusal_to_preflight():
    assert NO_GPU.gpus == () and "couldn't communicate" in NO_GPU.nvidia_smi_error
    spec = BoxSpec("h", gpus="all")
    choice = choose(spec, NO_GPU)
    with pytest.raises(HostUnreachable) as err:
        plan_up(BoxSpec("h", gpus="all", base_image=choice.tag), NO_GPU, TAG, KEYS, "k")
    assert "nvidia-smi found none" in err.value.message


def test_auto_keeps_the_box_base_while_it_still_works():
    kept = "pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"
    choice = choose(BoxSpec("h"), H100, current=kept)
    assert choice.tag == kept and "2.11.0-cuda13.0" in choice.why
    assert auto(RTX5090, current="pytorch/pytorch:2.6.0-cuda12.6-cudnn9-runtime").startswith("pytorch/pytorch:2.11.0-cuda12.8")


def test_an_explicit_base_with_a_too_new_cuda_is_refused_naming_the_tag_that_works():
    spec = BoxSpec("h", base_image="pytorch/pytorch:2.11.0-cuda13.0-cudnn9-runtime")
    with pytest.raises(HostUnreachable) as err:
        plan_up(spec, OLD_DRIVER, TAG, KEYS, "k")
    assert err.value.exit_code == 3 and "CUDA 13.0" in err.value.message and "12.2" in err.value.message
    assert "pytorch/pytorch:2.7.1-cuda11.8-cudnn9-runtime" in err.value.remedy


def test_an_explicit_base_without_kernels_for_the_gpu_is_refused():
    spec = BoxSpec("h", base_image="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime")
    with pytest.raises(HostUnreachable) as err:
        refuse_unworkable(spec, RTX5090)
    assert "no kernels for sm_120" in err.value.message and "2.11.0-cuda12.8" in err.value.remedy


def test_an_explicit_base_that_works_or_is_not_a_pytorch_tag_passes():
    refuse_unworkable(BoxSpec("h", base_image="pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime"), RTX5090)
    refuse_unworkable(BoxSpec("h", base_image="local/debian:bookworm"), RTX5090)
    # an untabled pytorch tag: its CUDA is still known from the name, its kernels are not
    refuse_unworkable(BoxSpec("h", base_image="pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime"), RTX5090)
    with pytest.raises(HostUnreachable):
        refuse_unworkable(BoxSpec("h", base_image="pytorch/pytorch:2.13.0-cuda13.2-cudnn9-runtime"), H100)


def test_arch_rules_sass_within_a_major_and_ptx_forward():
    assert Arch.parse("8.0").runs((8, 6)) and not Arch.parse("8.6").runs((8, 0)) and not Arch.parse("9.0").runs((10, 0))
    assert Arch.parse("12.0+PTX").runs((13, 0)) and not Arch.parse("12.0").runs((13, 0))


def test_every_table_row_is_a_runtime_tag_with_archs_and_a_source():
    rows = load_table()
    assert len(rows) >= 15 and all(r.tag.endswith("-runtime") and r.archs and r.source for r in rows)
    assert [r.tag for r in rows] == sorted({r.tag for r in rows}, key=lambda t: [r.tag for r in rows].index(t))
    assert rows == tuple(sorted(rows, key=lambda r: (r.torch, r.cuda), reverse=True))
    assert not problems(rows[0], H100)


def test_auto_asks_the_host_in_one_exchange_with_the_box_base():
    script = gpu_script(BoxSpec("h"))
    assert script.count("nvidia-smi --query-gpu=index,uuid,name,driver_version,memory.total,compute_cap") == 1
    assert "devbox.base" in script and "docker info" not in script


# ---------------------------------------------------------------- GPUs by UUID


def test_gpus_accept_uuids_and_indices(tmp_path):
    cfg = tmp_path / "devbox.toml"
    cfg.write_text(f'[hosts.h]\ngpus = ["{H100_UUID}", 0]\n')
    assert load_spec("h", cfg).gpus == (0, H100_UUID)


@pytest.mark.parametrize("bad", ['["GPU-1234"]', '["gpu-46748a73-18ca-02c2-e029-6e440dca4aa4"]', '["MIG-1"]', '["0"]', "[true]"])
def test_a_malformed_gpu_name_is_a_config_error(tmp_path, bad):
    cfg = tmp_path / "devbox.toml"
    cfg.write_text(f"[hosts.h]\ngpus = {bad}\n")
    with pytest.raises(ConfigError) as err:
        load_spec("h", cfg)
    assert "UUIDs" in err.value.remedy


def test_a_uuid_the_host_lacks_is_refused_naming_the_ones_it_has():
    missing = "GPU-ffffffff-18ca-02c2-e029-6e440dca4aa4"
    with pytest.raises(HostUnreachable) as err:
        plan_up(BoxSpec("h", gpus=(missing,), base_image=load_table()[0].tag), H100, TAG, KEYS, "k")
    assert err.value.exit_code == 3 and missing in err.value.message and f"0: {H100_UUID}" in err.value.message


def test_a_uuid_the_host_has_is_passed_to_docker_as_a_device():
    spec = BoxSpec("h", gpus=(H100_UUID.upper().replace("GPU-", "GPU-"),), base_image=load_table()[0].tag)
    plan_up(spec, H100, TAG, KEYS, "k")   # case does not matter to nvidia-smi's answer
    args = run_args(BoxSpec("h", gpus=(H100_UUID,)), H100, 20000, TAG, {})
    assert args[args.index("--gpus") + 1] == f'"device={H100_UUID}"'


# ---------------------------------------------------------------- NCCL runtime


def test_memlock_is_unlimited_where_the_engine_may_raise_it():
    assert parse_memlock("8388608\n000001ffffffffff") == -1, "CAP_SYS_RESOURCE: any limit"
    assert parse_memlock("unlimited\n0000000000000000") == -1
    assert memlock_ulimit(Facts(memlock_max=-1)) == ("memlock=-1", "")
    assert memlock_ulimit(Facts())[0] == "memlock=-1", "unknown: ask, as on any ordinary host"


def test_memlock_falls_back_to_the_engine_limit_with_a_warning():
    # what this test bed's dockerd has: 8 MiB hard limit, CapEff without bit 24
    assert parse_memlock("8388608\n000001fffeffffff") == 8388608
    arg, warning = memlock_ulimit(Facts(memlock_max=8388608))
    assert arg == "memlock=8388608:8388608" and "8192 KiB" in warning and "LimitMEMLOCK" in warning
    assert parse_memlock("") is None and parse_memlock("x y") is None
    # several engines (one may end meanwhile): the lowest limit any of them has
    assert parse_memlock("unlimited 0000000000000000\n8388608 000001fffeffffff\n") == 8388608
    assert parse_memlock("unlimited 0000000000000000\n16777216 000001ffffffffff\n") == -1


def test_shm_is_half_the_box_memory_unless_set():
    f = Facts(host_memory=128 << 30, host_cpus=16)
    assert shm_size(BoxSpec("h"), f) == f"{(128 * 1024 - 128 * 1024 // 10) // 2}m"   # memory auto: host less 10%
    assert shm_size(BoxSpec("h", memory="64g"), f) == "32768m"
    assert shm_size(BoxSpec("h", memory=""), f) == "65536m"
    assert shm_size(BoxSpec("h", memory="1g"), f) == "1024m", "never under 1 GiB"
    assert shm_size(BoxSpec("h", shm_size="2g"), f) == "2g"
    assert shm_size(BoxSpec("h"), Facts()) == "8g"


def test_run_args_are_nccl_ready_without_ipc_host_or_capabilities():
    args = run_args(BoxSpec("h"), Facts(host_memory=64 << 30, runtimes=("nvidia",), memlock_max=-1), 20000, TAG, {})
    assert args[args.index("--ulimit") + 1] == "memlock=-1" and args[args.index("--shm-size") + 1] == "29491m"   # half of 64 GiB less 10%
    assert not any(a.startswith("--ipc") or a == "--cap-add" or a == "--privileged" for a in args)
    assert args[args.index("--cap-drop") + 1] == "ALL"


def test_a_plan_that_creates_a_box_on_a_limited_engine_warns():
    spec = BoxSpec("h", gpus="none", base_image=AUTO)
    plan = plan_up(spec, host("", "", memlock_max=8388608, image_present=False), TAG, KEYS, "k")
    assert any("8192 KiB" in w for w in plan.warnings)
    create = plan.steps[-1]
    assert "memlock=8388608:8388608" in " ".join(create.commands())


def test_a_dry_run_says_which_base_and_why():
    from devbox.commands.up import UpResult

    choice = choose(BoxSpec("h"), H100)
    text = UpResult("h", dry_run=True, steps=["start box"], base_image=choice.tag, base_why=choice.why).text()
    assert text.splitlines()[1] == f"  base image {choice.tag}: {choice.why}"
