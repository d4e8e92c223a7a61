"""engine.kernels.audit on hand-written ptxas logs and SASS (the gate's reading of the compiled code)."""
from engine.kernels import audit

LOG = """\
ptxas info    : 11 bytes gmem
ptxas info    : Compiling entry function '_attn_fwd_kernel' for 'sm_90a'
ptxas info    : (C7515) Potential Performance Loss: wgmma.mma_async instructions are serialized due to ...
ptxas info    : Function properties for _attn_fwd_kernel
    48 bytes stack frame, 44 bytes spill stores, 52 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 48 bytes cumulative stack size
"""

SASS = """\
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   LDG.E R8, desc[UR4][R2.64] ;
        /*0030*/                   UTMALDG.4D [UR8], [UR4] ;
        /*0040*/                   WARPGROUP.ARRIVE ;
        /*0050*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR24], RZ, !UPT ;
        /*0060*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR20], R24, gsb0 ;
        /*0070*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0080*/                   STL [R1], R5 ;
        /*0090*/              @!P0 BRA 0x30 ;
        /*00a0*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR4][R6.64] ;
        /*00b0*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*00c0*/               @P1 BRA 0xa0 ;
        /*00d0*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*00e0*/                   EXIT ;
"""


def test_ptxas_report():
    r = audit.ptxas_report(LOG)
    assert (r["regs"], r["stack"], r["spill_stores"], r["spill_loads"]) == (255, 48, 44, 52)
    assert len(r["warnings"]) == 1 and "(C7515)" in r["warnings"][0] and "serialized" in r["warnings"][0]


def test_sass_report_counts_and_hot_loop():
    r = audit.sass_report(SASS)
    a = r["all"]
    assert (a["ldg"], a["ldg128"], a["stg128"], a["tma"], a["hgmma"], a["hmma"]) == (2, 1, 1, 1, 2, 1)
    assert (a["ldgsts"], a["ldgsts128"], a["local"], a["waits"], a["instrs"]) == (1, 1, 1, 1, 15)
    assert r["loops"] == 2
    loop = r["loop"]  # of the two loops, 0x30 .. 0x90 has the most tensor-core instructions: the hot one
    assert (loop["hgmma"], loop["tma"], loop["waits"], loop["local"], loop["ldgsts"]) == (2, 1, 1, 1, 0)


def test_table_lists_failures():
    row = {"name": "x", "ok": False, "regs": None, "error": "PTXASError: boom"}
    assert "FAILED: PTXASError: boom" in audit.table([row])
