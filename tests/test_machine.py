"""Benchmark records name the machine: the CPU model from lscpu or /proc/cpuinfo."""

import subprocess

from linalign import machine


def test_cpu_model_reads_lscpu_then_cpuinfo(monkeypatch):
    name = machine.cpu_model()
    assert isinstance(name, str) and name and "\n" not in name
    info = machine.machine_info()
    assert info["cpu"] == name and info["cores"] >= 1

    def no_lscpu(*a, **k):
        raise FileNotFoundError("lscpu")

    monkeypatch.setattr(subprocess, "run", no_lscpu)
    fallback = machine.cpu_model()
    with open("/proc/cpuinfo") as f:
        want = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    if want is not None:
        assert fallback == want
    assert fallback
