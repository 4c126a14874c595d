def test_up_then_openssh_reaches_box(laptop):
    reports, done = laptop.devbox.json("up", "gpu-host-1")
    print(done.stderr)
    report = reports[0]
    assert report["error"] == ""
    print(report)
    r = laptop.ssh("devbox-gpu-host-1", "whoami")
    assert r.stdout.strip() == "dev", r.stderr
