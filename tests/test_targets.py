"""Named targets: CPU detection, target dicts, toolchain errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from parcnet_tvm.schedules.cpu_target import CACHES, cpu_target

from parcnet_tvm import ParcnetError, targets
from parcnet_tvm.targets import get_target

# /proc/cpuinfo flags as real machines list them (the lines' ISA part; the rest does not count).
BASE = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
        "syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl cpuid pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 "
        "x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm abm fsgsbase bmi1 avx2 smep bmi2 erms invpcid")
SKX = BASE + " avx512f avx512dq rdseed adx smap clflushopt clwb avx512cd avx512bw avx512vl xsaveopt xsavec"
CLX = SKX + " avx512_vnni"
SPR = (SKX + " avx512ifma sha_ni avx_vnni avx512_bf16 wbnoinvd avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni "
       "vaes vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq la57 rdpid cldemote movdiri movdir64b enqcmd "
       "fsrm md_clear serialize tsxldtrk pconfig arch_lbr ibt amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d")
GNR = SPR + " amx_fp16 prefetchiti"
NO_AVX512 = " ".join(f for f in SPR.split() if not f.startswith("avx512"))
NO_AMX = " ".join(f for f in SPR.split() if not f.startswith("amx"))
ZEN2 = BASE + " sse4a misalignsse 3dnowprefetch topoext rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec clzero"
ZEN3 = ZEN2 + " vaes vpclmulqdq pku ospke"
ZEN4 = ZEN3 + (" avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi umip avx512_vbmi2 gfni "
               "avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm")  # this machine's (AMD EPYC 9004) flags
ZEN5 = ZEN4 + " avx_vnni avx512_vp2intersect movdiri movdir64b"


def available(name: str) -> str:
    """`name`, or the nearest older name where TVM's LLVM does not know it."""
    while not targets.llvm_knows(name):
        name = targets.OLDER[name]
    return name


def fake_machine(root, vendor="GenuineIntel", family=6, model=143, stepping=8, flags=SPR, cpus=2,
                 caches=((1, "Data", "48K", "0-1"), (1, "Instruction", "32K", "0-1"),
                         (2, "Unified", "2048K", "0-1"), (3, "Unified", "107520K", "0-3")),
                 siblings=("0-1", "0-1", "2-3", "2-3")):
    """A /proc/cpuinfo and /sys/devices/system/cpu tree under `root` (caches: cpu0's indexes)."""
    (root / "proc").mkdir(parents=True)
    block = (f"vendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
             f"model name\t: Test CPU {family}/{model}\nstepping\t: {stepping}\nflags\t\t: {flags}\n")
    (root / "proc/cpuinfo").write_text("\n".join(f"processor\t: {n}\n{block}" for n in range(cpus)))
    cpu_dir = root / "sys/devices/system/cpu"
    for n, sibling_list in enumerate(siblings):
        (cpu_dir / f"cpu{n}/topology").mkdir(parents=True)
        (cpu_dir / f"cpu{n}/topology/thread_siblings_list").write_text(sibling_list + "\n")
    for index, (level, kind, size, shared) in enumerate(caches):
        d = cpu_dir / f"cpu0/cache/index{index}"
        d.mkdir(parents=True)
        for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
            (d / name).write_text(f"{value}\n")
    return root


@pytest.mark.parametrize("vendor, family, model, stepping, expected", [
    ("GenuineIntel", 6, 85, 4, "skylake-avx512"), ("GenuineIntel", 6, 85, 7, "cascadelake"),
    ("GenuineIntel", 6, 85, 11, "cooperlake"), ("GenuineIntel", 6, 106, 6, "icelake-server"),
    ("GenuineIntel", 6, 143, 8, "sapphirerapids"), ("GenuineIntel", 6, 207, 2, "emeraldrapids"),
    ("GenuineIntel", 6, 173, 1, "graniterapids"), ("GenuineIntel", 6, 174, 1, "graniterapids-d"),
    ("GenuineIntel", 6, 126, 5, "icelake-client"), ("GenuineIntel", 6, 140, 1, "tigerlake"),
    ("GenuineIntel", 6, 151, 2, "alderlake"), ("GenuineIntel", 6, 183, 1, "raptorlake"),
    ("GenuineIntel", 6, 63, 2, "haswell"), ("GenuineIntel", 6, 79, 1, "broadwell"),
    ("GenuineIntel", 6, 158, 10, "skylake"), ("GenuineIntel", 6, 250, 0, None),
    ("AuthenticAMD", 23, 1, 2, "znver1"), ("AuthenticAMD", 23, 49, 0, "znver2"), ("AuthenticAMD", 23, 113, 0, "znver2"),
    ("AuthenticAMD", 25, 1, 1, "znver3"), ("AuthenticAMD", 25, 33, 0, "znver3"), ("AuthenticAMD", 25, 17, 1, "znver4"),
    ("AuthenticAMD", 25, 97, 2, "znver4"), ("AuthenticAMD", 25, 160, 2, "znver4"), ("AuthenticAMD", 26, 2, 0, "znver5"),
    ("AuthenticAMD", 26, 68, 0, "znver5"), ("HygonGenuine", 24, 1, 1, None),
])
def test_x86_cpu_identified_by_vendor_family_model(vendor, family, model, stepping, expected):
    assert targets.identify_x86(vendor, family, model, stepping) == expected
    assert expected is None or targets.llvm_knows(available(expected))


@pytest.mark.parametrize("vendor, family, model, stepping, flags, identified, mcpu", [
    ("GenuineIntel", 6, 207, 2, SPR, "emeraldrapids", "emeraldrapids"),   # Emerald Rapids Xeon
    ("GenuineIntel", 6, 143, 8, SPR, "sapphirerapids", "sapphirerapids"),
    ("GenuineIntel", 6, 173, 1, GNR, "graniterapids", "graniterapids"),
    ("GenuineIntel", 6, 85, 7, CLX, "cascadelake", "cascadelake"),
    ("GenuineIntel", 6, 143, 8, NO_AMX, "sapphirerapids", "icelake-server"),  # a guest without AMX
    ("GenuineIntel", 6, 250, 0, SPR, None, "sapphirerapids"),  # a model we do not know: by its flags
    ("AuthenticAMD", 25, 17, 1, ZEN4, "znver4", "znver4"),   # EPYC 9004 (Genoa), as on this machine
    ("AuthenticAMD", 25, 17, 1, ZEN3, "znver4", "znver3"),   # ... with AVX-512 masked off
    ("AuthenticAMD", 26, 2, 0, ZEN5, "znver5", "znver5"),    # EPYC 9005 (Turin)
    ("AuthenticAMD", 23, 49, 0, ZEN2, "znver2", "znver2"),
    ("GenuineIntel", 6, 63, 2, "fpu sse sse2", "haswell", "x86-64"),
])
def test_x86_mcpu_from_identity_checked_against_flags(tmp_path, vendor, family, model, stepping, flags,
                                                       identified, mcpu):
    host = targets.read_host_cpu(fake_machine(tmp_path, vendor, family, model, stepping, flags), cpus=[0, 1])
    assert (host.vendor, host.family, host.model, host.stepping) == (vendor, family, model, stepping)
    assert (host.identified, host.mcpu) == (identified, available(mcpu))
    assert bool(host.missing_features) == (available(identified or mcpu) != host.mcpu)


def test_sapphire_rapids_guest_without_avx512_steps_down_to_avx2(tmp_path, monkeypatch):
    host = targets.read_host_cpu(fake_machine(tmp_path, flags=NO_AVX512), cpus=[0, 1])
    assert host.identified == "sapphirerapids" and "avx512f" in host.missing_features
    monkeypatch.setattr(targets, "host_cpu", lambda: host)
    assert cpu_target(get_target("x86").target).isa == "avx2"


def test_a_name_older_llvm_lacks_falls_back_and_both_are_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(targets, "llvm_knows", lambda name: name not in ("emeraldrapids", "znver5"))
    emerald = targets.read_host_cpu(fake_machine(tmp_path / "emr", model=207, stepping=2), cpus=[0])
    zen5 = targets.read_host_cpu(fake_machine(tmp_path / "zen5", "AuthenticAMD", 26, 2, 0, ZEN5), cpus=[0])
    assert (emerald.identified, emerald.mcpu, emerald.missing_features) == ("emeraldrapids", "sapphirerapids", ())
    assert (zen5.identified, zen5.mcpu) == ("znver5", "znver4")
    monkeypatch.setattr(targets, "host_cpu", lambda: emerald)
    assert targets.host_cpu_description()["identified"] == "emeraldrapids"
    assert "family 6 model 207" in get_target("x86").description
    assert "identified as emeraldrapids" in get_target("x86").description


def test_caches_and_cores_from_sysfs_reach_cpu_target(tmp_path, monkeypatch):
    # Four CPUs, two cores of two SMT threads; L2 per core, L3 shared by both cores.
    host = targets.read_host_cpu(fake_machine(tmp_path), cpus=[0, 1, 2, 3])
    assert (host.l1d_bytes, host.l2_bytes, host.l3_bytes) == (48 << 10, 2 << 20, 105 << 20)
    assert (host.l2_shared_by_cores, host.l3_shared_by_cores, host.cores, host.physical_cores) == (1, 2, 4, 2)
    monkeypatch.setattr(targets, "host_cpu", lambda: host)
    described = targets.host_cpu_description()
    assert described["source"] == "cpuid+sysfs" and described["l2_bytes"] == 2 << 20
    json.dumps(described)
    cpu = cpu_target(get_target("x86").target)
    assert (cpu.isa, cpu.l1_bytes, cpu.l2_bytes) == ("avx512", 48 << 10, 2 << 20)
    # Another CPU's name, or a target for another machine (mtriple), keeps its table entry.
    assert cpu_target(get_target("x86", mcpu="haswell").target).l2_bytes == CACHES["haswell"][1]
    other = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": host.mcpu})
    assert cpu_target(other).l2_bytes == CACHES["sapphirerapids"][1]


def test_an_l2_shared_by_a_cluster_is_split_among_its_cores(tmp_path):
    caches = ((1, "Data", "32K", "0"), (2, "Unified", "4096K", "0-3"))  # four E-cores, one L2
    host = targets.read_host_cpu(fake_machine(tmp_path, caches=caches, siblings=("0", "1", "2", "3")), cpus=[0, 1])
    assert (host.l2_bytes, host.l2_shared_by_cores, host.l2_per_core) == (4 << 20, 4, 1 << 20)


def test_without_sysfs_caches_come_from_the_table(tmp_path, monkeypatch):
    root = fake_machine(tmp_path, "AuthenticAMD", 25, 17, 1, ZEN4, caches=(), siblings=())
    host = targets.read_host_cpu(root, cpus=[0, 1])
    assert (host.mcpu, host.l1d_bytes, host.l2_bytes, host.physical_cores) == ("znver4", None, None, 2)
    monkeypatch.setattr(targets, "host_cpu", lambda: host)
    assert targets.host_cpu_description()["source"] == "cpuid"
    cpu = cpu_target(get_target("x86").target)
    assert (cpu.l1_bytes, cpu.l2_bytes) == CACHES["znver4"]


def test_without_an_x86_cpuinfo_the_target_is_generic_x86_64(tmp_path):
    assert targets.read_host_cpu(tmp_path, cpus=[0]).mcpu == "x86-64"


def test_this_machine_is_detected_and_its_target_compiles():
    host = targets.host_cpu()
    fields = [line.partition(":") for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()]
    info = {key.strip(): value.strip() for key, _, value in fields}
    assert (host.vendor, host.family, host.model) == (info["vendor_id"], int(info["cpu family"]), int(info["model"]))
    if (host.vendor, host.family, host.model) == ("AuthenticAMD", 25, 17):  # the CI machine: AMD EPYC 9004
        assert (host.identified, host.mcpu) == ("znver4", "znver4")
    assert targets.llvm_knows(host.mcpu) and targets.host_cpu_description()["mcpu"] == host.mcpu
    named = get_target("x86")
    assert named.as_dict()["mcpu"] == host.mcpu and f"family {host.family} model {host.model}" in named.description
    a = tvm.te.placeholder((64,), name="a")
    b = tvm.te.compute((64,), lambda i: a[i] * 2.0 + 1.0, name="b")
    lib = tvm.compile(tvm.IRModule({"main": tvm.te.create_prim_func([a, b])}), target=named.target)
    x = np.arange(64, dtype="float32")
    y = tvm.runtime.tensor(np.zeros(64, dtype="float32"))
    lib["main"](tvm.runtime.tensor(x), y)
    np.testing.assert_allclose(y.numpy(), x * 2 + 1)


def test_host_target_is_detected_cpu_with_core_count():
    target = get_target("x86").as_dict()
    assert target["kind"] == "llvm"
    assert target["mcpu"] == targets.detect_x86_mcpu()
    assert target["num-cores"] == targets.host_cores()


def test_use_threads_sets_tvm_and_pytorch_threads_in_a_fresh_process():
    """TVM alone sizes its pool from the topology (1 thread on a 2-vCPU VM): use_threads gives it
    every core, or the count asked for, and PyTorch the same."""
    code = ("import torch; from parcnet_tvm.targets import use_threads; import sys\n"
            "print(use_threads(int(sys.argv[1])), torch.get_num_threads())")
    for asked, expected in ((0, targets.host_cores()), (1, 1), (3, 3)):
        done = subprocess.run([sys.executable, "-c", code, str(asked)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(expected)] * 2, (asked, done.stdout)


def test_arm_target_is_cortex_a17_hard_float():
    target = get_target("arm").as_dict()
    assert target["mtriple"] == "armv7a-linux-gnueabihf"
    assert target["mcpu"] == "cortex-a17"
    assert target["mfloat-abi"] == "hard"
    assert set(target["mattr"]) == {"+neon", "+vfp4"}
    assert target["feature.has_asimd"]  # LLVM sees NEON, so the ARM schedule rules apply


def test_cuda_arch_default_and_override():
    expected = targets.local_cuda_arch() or "sm_90"
    assert get_target("cuda").as_dict()["arch"] == expected
    assert get_target("cuda", cuda_arch="sm_86").as_dict()["arch"] == "sm_86"
    with pytest.raises(ParcnetError, match="sm_90"):
        get_target("cuda", cuda_arch="hopper")


def test_unknown_target():
    with pytest.raises(ParcnetError, match="unknown target 'riscv'.*x86, arm, cuda"):
        get_target("riscv")


def test_missing_cross_compiler_names_debian_package(monkeypatch):
    monkeypatch.setattr(targets.shutil, "which", lambda tool: None)
    with pytest.raises(ParcnetError, match="apt-get install g\\+\\+-arm-linux-gnueabihf"):
        get_target("arm").check_toolchain()
