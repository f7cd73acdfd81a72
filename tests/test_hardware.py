"""CPU detection, the precision `optimize_for_inference(dtype=...)` chooses from it, the allocator setting."""

import dataclasses
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tessera
import tessera.inference as inference
from tessera.hardware import CPUInfo, cpu_info
from tessera.inference import choose_inference_dtype, optimize_for_inference


def fake(**kw) -> CPUInfo:
    base = CPUInfo("Test CPU", ("avx2",), "AVX2", False, False, 1 << 20, 32 << 20, 2)
    return dataclasses.replace(base, **kw)


def test_cpu_info_describes_this_machine():
    info = cpu_info()
    assert info.torch_capability == torch.backends.cpu.get_cpu_capability()
    assert info.threads == torch.get_num_threads()
    assert set(info.flags) <= {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile",
                               "amx_bf16", "amx_int8"}
    assert info.bf16_arithmetic == (bool({"avx512_bf16", "amx_bf16"} & set(info.flags))
                                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert info.as_dict()["model"] == info.model
    threads = torch.get_num_threads()
    try:  # the thread count is read at each call (a command's --threads changes it after the first)
        torch.set_num_threads(1)
        assert cpu_info().threads == 1
    finally:
        torch.set_num_threads(threads)
    if Path("/proc/cpuinfo").exists():  # Linux: the vendor's numbers, which name the generation
        assert re.fullmatch(r"family \d+, model \d+", info.family_model)


@pytest.mark.parametrize(
    "info,asked,expected",
    [
        (fake(), "auto", (torch.float32, None)),
        (fake(bf16_arithmetic=True, flags=("avx512_bf16",)), "auto", (torch.bfloat16, None)),
        (fake(bf16_arithmetic=True, amx=True), "auto", (torch.bfloat16, None)),
        (fake(), "bf16", (torch.bfloat16, torch.float32)),  # emulated bf16: fp32 matmuls
        (fake(bf16_arithmetic=True), "fp32", (torch.float32, None)),
    ],
)
def test_the_choice_follows_the_cpu(monkeypatch, info, asked, expected):
    monkeypatch.setattr(inference, "cpu_info", lambda: info)
    storage, matmul, why = choose_inference_dtype(asked)
    assert (storage, matmul) == expected
    assert "Test CPU" in why or asked == "fp32"


@pytest.mark.parametrize("bf16", [False, True])
def test_auto_mode_converts_says_what_it_chose_and_stays_close(monkeypatch, bf16):
    monkeypatch.setattr(inference, "cpu_info", lambda: fake(bf16_arithmetic=bf16))
    kw = dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, img_size=32, num_classes=5)
    torch.manual_seed(0)
    ref = tessera.create_model("swin_tiny_patch4_window7_224", **kw).eval()
    model = tessera.create_model("swin_tiny_patch4_window7_224", **kw).eval()
    model.load_state_dict(ref.state_dict())
    optimize_for_inference(model, dtype="auto")
    assert ("bf16" in model.inference_choice) == bf16
    assert next(model.parameters()).dtype == (torch.bfloat16 if bf16 else torch.float32)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        y, y_ref = model(x.to(next(model.parameters()).dtype)).float(), ref(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y_ref, rtol=0, atol=5e-2 if bf16 else 1e-5)


def test_dtype_and_matmul_dtype_together_is_an_error():
    model = tessera.create_model("vit_base_patch16_224", embed_dim=16, depth=1, num_heads=2, img_size=32)
    with pytest.raises(ValueError, match="not both"):
        optimize_for_inference(model, matmul_dtype=torch.float32, dtype="auto")
    with pytest.raises(ValueError, match="'auto', 'fp32' or 'bf16'"):
        optimize_for_inference(model, dtype="fp16")


def test_onednn_kernels_names_the_implementation_each_gemm_reaches():
    from tessera.hardware import onednn_kernels

    kernels = onednn_kernels()
    assert set(kernels) == {"fp32 linear", "fp32 matmul", "bf16 linear", "bf16 matmul"}
    info = cpu_info()
    # oneDNN's inner product always runs in oneDNN; its ISA is the best the CPU has
    assert kernels["fp32 linear"] and kernels["fp32 linear"] != "not oneDNN (MKL / aten)"
    if "avx512f" in info.flags:
        assert "avx512" in kernels["fp32 linear"]
    if info.amx:
        assert "amx" in kernels["bf16 linear"]  # the AMX kernel (issue: bf16 GEMMs must reach it)
    elif info.bf16_arithmetic:
        assert "bf16" in kernels["bf16 linear"] and "amx" not in kernels["bf16 linear"]


_REFAULT = """
import resource, sys, torch
from tessera.hardware import tune_allocator
applied = tune_allocator() if sys.argv[1] == "tuned" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):  # 64 MiB written and freed: the heap settles (glibc takes a few rounds)
    torch.ones(64, 1024, 1024 // 4).sum()
before = faults()
for _ in range(3):
    torch.ones(64, 1024, 1024 // 4).sum()  # the same size again: fresh pages or the freed ones
print(applied, faults() - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
def test_tuned_allocator_reuses_freed_memory_instead_of_page_faulting_it_again():
    def run(mode: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _REFAULT, mode], capture_output=True, text=True, check=True)
        applied, faults = out.stdout.split()
        return applied, int(faults)

    applied, tuned = run("tuned")
    _, system = run("system")
    pages = 3 * 64 * 1024**2 // 4096  # three 64 MiB blocks of 4 KiB pages
    assert applied == "True"
    assert system > pages // 2  # glibc's default unmaps each block on free: every page faults again
    assert tuned < pages // 20  # kept in the heap: the pages are reused


def test_tune_allocator_sets_and_restores_glibcs_parameters_and_is_a_no_op_without_glibc(monkeypatch):
    from tessera import hardware

    calls = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(hardware, "_glibc", lambda: FakeLibc())
    assert hardware.tune_allocator() is True
    assert dict(calls) == {-4: 0, -1: 1 << 30}  # M_MMAP_MAX: no mmap; M_TRIM_THRESHOLD: keep 1 GiB
    assert hardware.allocator_setting() == "tuned"
    calls.clear()
    assert hardware.tune_allocator(False) is True
    assert dict(calls) == {-4: 65536, -1: 128 * 1024}  # glibc's defaults
    assert hardware.allocator_setting() == "system"
    monkeypatch.setattr(hardware, "_glibc", lambda: None)
    assert hardware.tune_allocator() is False
