def test_up_then_openssh_reaches_box(laptop):
    reports, _ = laptop.devbox.json("up", laptop.host1)
    assert reports[0]["error"] == ""
    r = laptop.ssh(f"devbox-{laptop.host1}", "whoami")
    assert r.stdout.strip() == "dev", r.stderr
