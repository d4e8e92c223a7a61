"""Every kernel configuration the launchers can pick compiles for Hopper (sm_90), as the launcher specialises it,
and fits H200 shared memory. The builds come from the session fixture in conftest.py (shared with the gate).
"""
import pytest
import torch

from engine.kernels import aot


@pytest.mark.parametrize("family", aot.KERNEL_MODULES)
def test_every_configuration_compiles_for_sm90(sm90_builds, family):
    rows = sm90_builds["rows"][family]
    assert rows, f"no configurations compiled for {family}:\n{sm90_builds['stderr']}"
    failures = [r for r in rows if not r["ok"]]
    assert not failures, "\n".join(f"{r['name']} (warps={r['num_warps']}): {r['error']}" for r in failures)
    assert all(r["shared"] <= aot.H200_MAX_SHARED_BYTES for r in rows)
    assert len({r["name"] for r in rows}) == len(rows), "two builds share a name"


def test_launches_are_specialised_like_the_launcher():
    """ints equal to 1 become constants and ints / pointers divisible by 16 are marked, as at launch (Triton's
    own binder); arguments are found by name, whatever their position."""
    from engine.kernels.norm import norm_fwd

    with aot.recording() as rec:
        norm_fwd(aot.meta((4096, 768), torch.bfloat16), aot.meta((768,), torch.bfloat16),
                 aot.meta((768,), torch.bfloat16), 1e-5, rms=False)
        norm_fwd(aot.meta((1, 1000), torch.float32, strides=(1000, 1)), None, None, 1e-5, rms=True)
    big, odd = (aot.specialise(la) for la in rec.launches)
    assert big.signature["X"] == "*bf16" and big.signature["eps"] == "fp32"
    assert {"X", "W", "Y", "N", "n_rows", "stride_x_row"} <= set(big.aligned)  # 768 and 4096: multiples of 16
    assert "eps" not in big.aligned
    assert odd.constexprs["n_rows"] == 1 and odd.signature["n_rows"] == "constexpr"  # a 1 is a constant
    assert "N" not in odd.aligned and "stride_x_row" not in odd.aligned  # 1000 is not a multiple of 16
    assert big.key() != odd.key()


def test_sass_memo_is_keyed_by_the_cubin_and_read_before_disassembling(tmp_path, monkeypatch):
    """A memo entry is used only for the exact code it was made from (tool version and parser in the key too);
    anything else goes to cuobjdump. The memo file is written atomically and reads back equal."""
    pytest.importorskip("triton")
    import subprocess

    cubin = b"\x7fELF not a real cubin"
    key = aot.sass_key(cubin)
    assert key == aot.sass_key(bytes(cubin)) and key != aot.sass_key(cubin + b"\0") and len(key) == 64
    report = {"all": {"hgmma": 3}, "loop": None, "loops": 0}
    path = tmp_path / "memo.json"
    aot.write_sass_memo(str(path), {key: report})
    assert aot.load_sass_memo(str(path)) == {key: report} and [p.name for p in tmp_path.iterdir()] == ["memo.json"]
    monkeypatch.setenv("ENGINE_SASS_MEMO", str(path))
    run = subprocess.run

    def no_disassembly(cmd, *args, **kwargs):
        assert "-sass" not in cmd, "disassembled a cubin that is in the memo"
        return run(cmd, *args, **kwargs)

    monkeypatch.setattr(aot.subprocess, "run", no_disassembly)
    row = {}
    assert aot._sass_report(cubin, row) == report and row == {"sass_key": key, "sass_memo": True}
    with pytest.raises(AssertionError, match="disassembled"):  # other bytes: a real disassembly is attempted
        aot._sass_report(cubin + b"\0", {})


def test_a_broken_sass_memo_names_the_file(tmp_path):
    """A memo that is not JSON, or not {key: report object}, fails with the file's name and how to rebuild it."""
    path = tmp_path / "memo.json"
    for text in ('{"abc": {"loops": 0}', '["abc"]', '{"abc": 3}'):
        path.write_text(text)
        with pytest.raises(ValueError, match=f"SASS memo {path} is not .*delete it and rebuild it"):
            aot.load_sass_memo(str(path))
    assert aot.load_sass_memo(str(tmp_path / "absent.json")) == {}


def _elf(sections: dict[bytes, bytes]) -> bytes:
    """A minimal ELF64 (little-endian) holding ``sections`` (name -> bytes) after a null one and .shstrtab."""
    import struct

    names = [b"", b".shstrtab", *sections]
    strtab = b"\0".join(names) + b"\0"
    offsets, pos = [], 0
    for n in names:
        offsets.append(pos)
        pos += len(n) + 1
    bodies = [b"", strtab, *sections.values()]
    data, locs = b"", []
    for body in bodies:
        locs.append(64 + len(data))
        data += body
    shoff = 64 + len(data)
    header = b"\x7fELF" + bytes(36) + struct.pack("<Q", shoff) + bytes(10) + struct.pack("<HHH", 64, len(names), 1)
    header = header.ljust(64, b"\0")
    table = b"".join(struct.pack("<IIQQQQ", off, 1, 0, 0, loc, len(body)).ljust(64, b"\0")
                     for off, loc, body in zip(offsets, locs, bodies))
    return header + data + table


def test_sass_key_reads_the_code_not_the_debug_paths():
    """Two checkouts build the same kernel with different source paths in the debug sections: same key. Other
    code (or another relocation) is another key."""
    pytest.importorskip("triton")
    code = {b".text._k": b"\x01\x02" * 40, b".rela.text._k": b"\x09" * 24}
    here = aot.sass_key(_elf({**code, b".debug_line": b"/work/main/kernels/norm.py"}))
    assert here == aot.sass_key(_elf({**code, b".debug_line": b"/tmp/ci/kernels/norm.py\0\0"}))
    assert here != aot.sass_key(_elf({**code, b".text._k": b"\x01\x03" * 40, b".debug_line": b"/work/main"}))
    assert here != aot.sass_key(_elf({**code, b".rela.text._k": b"\x08" * 24, b".debug_line": b"/work/main"}))
