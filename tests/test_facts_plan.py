"""Pure planning: facts parsed from recorded host output, then the steps decided from them."""
from pathlib import Path

import pytest

from devbox.config import BoxSpec, Volume
from devbox.errors import HostUnreachable
from devbox.facts import MARK, Facts, Gpu, image_cuda, parse_driver_cuda, parse_facts, parse_gpu_csv
from devbox.plan import RunningJobs, choose_port, needs_host_check, plan_up, run_args

FIXTURES = Path(__file__).parent / "fixtures"
TAG = "devbox-ssh:abc"
KEYS = "# header\nrestrict,port-forwarding,pty ssh-ed25519 AAAA alice\n"


def section(name: str, body: str) -> str:
    return f"\n{MARK} {name}\n{body}\n"


def facts(**kw) -> Facts:
    base = dict(docker_version="24.0.7", docker_root_free_kib=50 * 1024 * 1024, image_present=True, base_present=True,
                host_checked=True)
    base.update(kw)
    return Facts(**base)


def running_box(spec: BoxSpec, port: int, tag: str = TAG) -> dict:
    labels = {"devbox.spec-hash": spec.spec_hash(port, tag), "devbox.port": str(port)}
    return {"Id": "c0ffee", "State": {"Running": True, "Status": "running"}, "Config": {"Labels": labels}}


CPU = BoxSpec("gpu-host-1", gpus="none")


def test_gather_output_is_parsed_into_facts():
    text = (section("docker", "24.0.7") + section("runtimes", '{"nvidia":{},"runc":{}}')
            + section("disk", "overlay 100 50 2048000 3% /var/lib/docker") + section("images", f'["{TAG}"]')
            + section("box", "[]") + section("ports", "127.0.0.1:20001->2222/tcp\n0.0.0.0:22")
            + section("keys", KEYS) + section("jobs", "train running\nold ended"))
    f = parse_facts(text, TAG)
    assert f.docker_version == "24.0.7" and f.runtimes == ("nvidia", "runc")
    assert f.docker_root_free_kib == 2048000 and f.image_present and not f.base_present
    assert f.box is None and 20001 in f.used_ports and 22 in f.used_ports
    assert f.running_jobs == ("train",) and f.job_count == 2


def test_base_and_image_are_told_apart_by_their_tags():
    both = parse_facts(section("images", f'["{TAG}"]\n["local/debian:bookworm"]'), TAG)
    assert both.image_present and both.base_present
    base_only = parse_facts(section("images", '["local/debian:bookworm"]'), TAG)
    assert not base_only.image_present and base_only.base_present
    neither = parse_facts(section("images", ""), TAG)
    assert not neither.image_present and not neither.base_present


def test_docker_permission_error_is_kept_for_the_message():
    f = parse_facts(section("docker", "permission denied while trying to connect to the Docker daemon socket"))
    assert f.docker_version is None and "permission denied" in f.docker_error


def test_preflight_without_docker_access_exits_3_and_says_what_to_do():
    with pytest.raises(HostUnreachable) as err:
        plan_up(CPU, facts(docker_version=None, docker_error="permission denied"), TAG, KEYS, "k")
    assert err.value.exit_code == 3 and "docker group" in err.value.remedy


def test_gpus_asked_on_a_host_without_nvidia_runtime_exits_3():
    spec = BoxSpec("h", gpus="all")
    gpus = (Gpu(0, "NVIDIA H100 80GB HBM3", "550.54", 81559),)
    with pytest.raises(HostUnreachable) as err:
        plan_up(spec, facts(gpus=gpus, runtimes=("runc",)), TAG, KEYS, "k")
    assert "nvidia-container-toolkit" in err.value.remedy


def test_gpus_asked_on_a_host_without_gpus_exits_3():
    with pytest.raises(HostUnreachable) as err:
        plan_up(BoxSpec("h", gpus="all"), facts(nvidia_smi_error="nvidia-smi: command not found"), TAG, KEYS, "k")
    assert "driver" in err.value.remedy


def test_driver_too_old_for_the_image_cuda_exits_3():
    spec = BoxSpec("h", gpus="all", base_image="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime")
    old = facts(gpus=(Gpu(0, "Tesla V100", "470.57", 16000),), runtimes=("nvidia",), driver_cuda="11.4")
    with pytest.raises(HostUnreachable) as err:
        plan_up(spec, old, TAG, KEYS, "k")
    assert "CUDA 11.4" in err.value.message and "12.4" in err.value.message


def test_low_disk_exits_3():
    with pytest.raises(HostUnreachable):
        plan_up(CPU, facts(image_present=False, docker_root_free_kib=1024), TAG, KEYS, "k")


def test_missing_host_path_volume_exits_3():
    spec = BoxSpec("h", gpus="none", volumes=(Volume("/data", "/data", True),))
    with pytest.raises(HostUnreachable):
        plan_up(spec, facts(missing_paths=("/data",)), TAG, KEYS, "k")


def test_fresh_host_gets_build_volumes_box_and_keys():
    plan = plan_up(CPU, facts(image_present=False), TAG, KEYS, "k")
    assert [s.action for s in plan.steps] == ["build_image", "create_volume", "create_volume", "create_volume", "create_volume",
                                              "create_network", "sync_keys", "create_box"]
    assert plan.steps[3].description.startswith("ensure volume devbox-gpu-host-1.keys ")
    assert plan.steps[4].description.startswith("ensure volume devbox-gpu-host-1.secrets ")
    for step in plan.steps[1:5]:  # each volume is made the box user's by a create that never starts, with no capability
        owner = step.commands()[0].split("c=$(", 1)[1]
        assert owner.startswith("docker create ") and "--cap-drop ALL" in owner and "--cap-add" not in owner
        assert f"--user {CPU.uid}:{CPU.gid}" in owner and "type=volume,source=devbox-gpu-host-1" in owner


def test_up_to_date_box_plans_nothing():
    port = choose_port(CPU, facts())
    plan = plan_up(CPU, facts(box=running_box(CPU, port), authorized_keys=KEYS.strip()), TAG, KEYS, "k")
    assert plan.steps == []


def test_changed_keys_only_sync_keys_without_recreating():
    port = choose_port(CPU, facts())
    plan = plan_up(CPU, facts(box=running_box(CPU, port), authorized_keys="old"), TAG, KEYS, "k")
    assert [s.action for s in plan.steps] == ["sync_keys"]


def test_spec_change_recreates_but_keeps_the_port():
    old = running_box(CPU, 23456)
    new_spec = BoxSpec("gpu-host-1", gpus="none", shm_size="1g")
    plan = plan_up(new_spec, facts(box=old, authorized_keys=KEYS.strip()), TAG, KEYS, "k")
    assert plan.port == 23456
    actions = [s.action for s in plan.steps]
    assert "remove_box" not in actions and actions[-1] == "create_box", "the old box is never removed before the new one runs"
    create = plan.steps[-1]
    assert create.replace and create.ports == (23456,)
    argv = create.argv_for(23456, "devbox-gpu-host-1.next")
    assert argv[0] == "create" and argv[argv.index("--name") + 1] == "devbox-gpu-host-1.next"


def test_spec_change_with_running_jobs_needs_force():
    old = running_box(CPU, 23456)
    new_spec = BoxSpec("gpu-host-1", gpus="none", shm_size="1g")
    with pytest.raises(RunningJobs) as err:
        plan_up(new_spec, facts(box=old, running_jobs=("train",)), TAG, KEYS, "k")
    assert "train" in err.value.message and "--force" in err.value.remedy
    assert plan_up(new_spec, facts(box=old, running_jobs=("train",)), TAG, KEYS, "k", force=True).steps


def test_port_is_stable_per_host_and_avoids_used_ports():
    first = choose_port(CPU, facts())
    assert choose_port(CPU, facts()) == first
    assert choose_port(CPU, facts(used_ports=frozenset({first}))) != first


def test_run_args_carry_the_hardening():
    args = run_args(CPU, facts(), 20000, TAG, {"devbox.managed": "true"})
    joined = " ".join(args)
    for flag in ("--cap-drop ALL", "--security-opt no-new-privileges", "--read-only", "--init",
                 "--publish 127.0.0.1:20000:2222", "--restart unless-stopped", "--user 1000:1000"):
        assert flag in joined
    assert "--gpus" not in joined
    gpu = run_args(BoxSpec("h", gpus=(0, 1)), facts(runtimes=("nvidia",)), 20000, TAG, {})
    assert gpu[gpu.index("--gpus") + 1] == '"device=0,1"'
    cdi = run_args(BoxSpec("h", gpus="all"), facts(cdi_nvidia=True), 20000, TAG, {})
    assert "nvidia.com/gpu=all" in cdi


def test_nvidia_smi_parsing_of_recorded_output():
    csv = (FIXTURES / "nvidia-smi-query-h100.csv").read_text()
    gpus, err = parse_gpu_csv(csv)
    assert gpus and err == "" and "H100" in gpus[0].name and gpus[0].memory_mib > 70000
    banner = (FIXTURES / "nvidia-smi-h100.txt").read_text()
    assert parse_driver_cuda(banner) is not None


def test_no_gpu_host_nvidia_smi_errors_are_reported():
    gpus, err = parse_gpu_csv("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    assert gpus == () and "NVIDIA driver" in err


def test_image_cuda_from_tag():
    assert image_cuda("pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime") == "12.4"
    assert image_cuda("local/debian:bookworm") is None


@pytest.mark.parametrize("delivery, base_present, local_image, expected", [
    ("auto", True, True, "build_image"),      # a few KB of context beats any layer
    ("auto", False, True, "stream_image"),    # host can't build without the base: send what it lacks
    ("auto", False, False, "build_image"),    # nothing to stream: the host pulls the base itself
    ("stream", True, True, "stream_image"),
    ("build", False, True, "build_image"),
])
def test_delivery_picks_the_cheapest_path(delivery, base_present, local_image, expected):
    spec = BoxSpec("h", gpus="none", delivery=delivery)
    plan = plan_up(spec, facts(image_present=False, base_present=base_present), TAG, KEYS, "k", local_image=local_image)
    assert plan.steps[0].action == expected


def test_stream_without_a_local_image_says_how_to_build_it():
    from devbox.errors import DevboxError
    with pytest.raises(DevboxError, match="not on this machine") as err:
        plan_up(BoxSpec("h", gpus="none", delivery="stream"), facts(image_present=False), TAG, KEYS, "k")
    assert "devbox build" in err.value.remedy and err.value.exit_code == 2


def test_changing_uid_with_kept_volumes_is_refused_before_anything_changes():
    from devbox.errors import DevboxError
    spec = BoxSpec("gpu-host-1", gpus="none", uid=4242, gid=4242)
    with pytest.raises(DevboxError) as err:
        plan_up(spec, facts(volume_owner="1000:1000"), TAG, KEYS, "k")
    assert "1000:1000" in err.value.message and "4242:4242" in err.value.message
    assert err.value.exit_code == 2 and "--purge" in err.value.remedy
    assert plan_up(BoxSpec("gpu-host-1", gpus="none"), facts(volume_owner="1000:1000"), TAG, KEYS, "k").steps


def test_a_box_that_matches_its_spec_needs_no_host_check():
    """No-op up skips `docker info` and nvidia-smi: only creating something needs them."""
    gpu = BoxSpec("h", gpus="all")
    port = choose_port(gpu, Facts())
    current = dict(host_checked=False, docker_root_free_kib=None, box=running_box(gpu, port), authorized_keys=KEYS.strip())
    assert not needs_host_check(gpu, facts(**current), TAG)
    plan = plan_up(gpu, facts(**current), TAG, KEYS, "k")  # no GPU facts, yet no preflight failure
    assert plan.steps == []
    assert needs_host_check(gpu, facts(**{**current, "box": None}), TAG)
    assert needs_host_check(gpu, facts(**{**current, "image_present": False}), TAG)
    assert needs_host_check(BoxSpec("h", gpus="all", shm_size="1g"), facts(**current), TAG)
    stopped = {**running_box(gpu, port), "State": {"Running": False}}
    assert needs_host_check(gpu, facts(**{**current, "box": stopped}), TAG)
    assert not needs_host_check(gpu, facts(docker_version=None, host_checked=False), TAG)


def test_planning_a_new_box_without_the_host_checks_is_a_bug_not_a_silent_skip():
    with pytest.raises(ValueError, match="host checks"):
        plan_up(BoxSpec("h", gpus="all"), facts(host_checked=False), TAG, KEYS, "k")


def test_the_host_check_section_marks_the_facts_checked():
    assert parse_facts(section("checked", "yes") + section("runtimes", '{"runc":{}}')).host_checked
    assert not parse_facts(section("docker", "24.0.7")).host_checked


def test_a_missing_box_still_gathers_the_used_ports(tmp_path):
    """`docker container inspect` of a missing box prints "[]": the ports section must still run
    (it never did, so `up` chose a port another program held). The real script, a fake docker."""
    import subprocess

    from devbox.facts import state_script

    (tmp_path / "docker").write_text('#!/bin/sh\ncase "$1 $2" in\n "container inspect") echo "[]";;\n'
                                     ' "ps -a") echo "127.0.0.1:20001->2222/tcp";;\n version) echo 24.0.7;;\nesac\n')
    (tmp_path / "ss").write_text("#!/bin/sh\necho 'LISTEN 0 128 127.0.0.1:20002 0.0.0.0:*'\n")
    for tool in ("docker", "ss"):
        (tmp_path / tool).chmod(0o755)
    done = subprocess.run(["sh", "-c", state_script(CPU, TAG)], capture_output=True, text=True,
                          env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    found = parse_facts(done.stdout, TAG)
    assert found.box is None and found.used_ports == {20001, 20002}, done.stdout + done.stderr


def test_port_candidates_skip_used_ports_and_a_configured_port_has_no_alternative():
    from devbox.plan import choose_ports

    first = choose_port(CPU, facts())
    ports = choose_ports(CPU, facts(used_ports=frozenset({first})))
    assert first not in ports and len(ports) == 8 and len(set(ports)) == 8
    assert choose_ports(BoxSpec("h", gpus="none", port=2345), facts(used_ports=frozenset({2345}))) == [2345]


def test_box_runs_on_its_own_network_with_limits_sized_from_the_host():
    from devbox.plan import CPU_SHARES, cpu_limit, memory_limit

    host = facts(host_cpus=16, host_memory=256 << 30, apparmor=True)
    argv = run_args(CPU, host, 20000, TAG, {})
    assert argv[argv.index("--network") + 1] == "devbox-gpu-host-1.net"
    assert argv[argv.index("--memory") + 1] == f"{(256 << 30) - (256 << 30) // 10 >> 20}m"     # 10% kept for the host
    assert argv[argv.index("--cpus") + 1] == "15" and argv[argv.index("--cpu-shares") + 1] == CPU_SHARES
    assert "apparmor=docker-default" in argv
    assert "type=volume,source=devbox-gpu-host-1.keys,target=/etc/devbox/keys,readonly" in argv
    small = facts(host_cpus=2, host_memory=4 << 30)
    assert memory_limit(CPU, small) == f"{2 << 10}m" and cpu_limit(CPU, small) == "2"   # 2 GiB kept, both CPUs
    assert "apparmor=docker-default" not in run_args(CPU, small, 20000, TAG, {})
    explicit = BoxSpec("h", gpus="none", memory="", cpus="")
    assert "--memory" not in run_args(explicit, host, 1, TAG, {}) and "--cpus" not in run_args(explicit, host, 1, TAG, {})
    assert memory_limit(BoxSpec("h", memory="64g"), host) == "64g"


def test_host_resources_are_parsed_from_docker_info():
    from devbox.facts import parse_resources

    assert parse_resources('16 270000000000 ["name=apparmor","name=seccomp,profile=default"]') == (16, 270000000000, True)
    assert parse_resources('2 24000000000 ["name=seccomp,profile=default"]') == (2, 24000000000, False)
    assert parse_resources("") == (None, None, False)


def test_restart_recreates_a_matching_box():
    port = choose_port(CPU, facts())
    plan = plan_up(CPU, facts(box=running_box(CPU, port), authorized_keys=KEYS.strip(), running_jobs=("x",)), TAG, KEYS, "k",
                   force=True, restart=True)
    assert plan.steps[-1].action == "create_box" and plan.steps[-1].replace
    assert plan_up(CPU, facts(box=running_box(CPU, port), authorized_keys=KEYS.strip()), TAG, KEYS, "k").notes


def test_a_host_path_that_leads_to_host_root_through_a_symlink_is_refused(tmp_path):
    """devbox.toml names /srv/data; on the host it is a symlink to /etc: refused all the same."""
    import subprocess

    from devbox.errors import ConfigError
    from devbox.facts import QUESTIONS

    data, link = tmp_path / "data", tmp_path / "innocent"
    data.mkdir()
    link.symlink_to("/etc")
    spec = BoxSpec("h", gpus="none", volumes=(Volume(str(data), "/data"), Volume(str(link), "/data2"), Volume("/nope", "/x")))
    script = f"sec() {{ echo; echo '{MARK}' \"$1\"; }}\nsec path; " + QUESTIONS["path"].ask(spec, TAG)
    found = parse_facts(subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout, TAG)
    assert found.missing_paths == ("/nope",)
    assert found.resolved_paths == {str(data): str(data), str(link): "/etc"}
    ok = facts(resolved_paths=found.resolved_paths)
    with pytest.raises(ConfigError, match="leads to /etc"):
        plan_up(spec, ok, TAG, KEYS, "k")
    allowed = BoxSpec("h", gpus="none", volumes=spec.volumes[:2], allow_host_root_mounts=True)
    assert plan_up(allowed, ok, TAG, KEYS, "k").steps
