"""The Hopper instructions of csrc/kernels/ptx_sm90.cuh, on every backend
present: each probe's expected values are worked out here by hand from the PTX
ISA's definitions (the rule each follows is in a comment beside it), never
from the emulator. On a GPU the same tests check the hardware, and so compare
the two.
"""

import numpy as np
import pytest

import fcn_cuda
from fcn_cuda.ops import probes

from _util import to_numpy

pytestmark = pytest.mark.kernels


# ------------------------------------------------------------------ mbarrier
def test_mbarrier_phases_by_hand(be):
    # mbarrier.init(count 2): phase 0, pending arrivals 2 (= expected), tx-count 0.
    # A phase completes when pending == 0 and tx-count == 0; the phase then
    # advances and pending is reset to the expected count, tx-count to 0.
    # test_wait.parity p is true when the phase of parity p has completed: p is
    # the parity of the phase before the current one (at init, phase "-1",
    # parity 1, counts as completed).
    expected = [
        0, 1,  # init: current phase 0 (parity 0) incomplete, its predecessor (parity 1) complete
        0, 1,  # arrive: pending 1
        0, 1,  # arrive.expect_tx 64: tx-count 64, then arrive: pending 0, yet bytes outstanding
        0, 1,  # complete_tx 32: tx-count 32
        1, 0,  # complete_tx 32: tx-count 0 and pending 0: phase 0 completes, phase 1 (parity 1) current
        1, 0,  # complete_tx 16 before any expect_tx: tx-count -16 (the ISA's range is signed)
        1, 0,  # arrive: pending 1
        0, 1,  # arrive.expect_tx 16: tx-count 0, pending 0: phase 1 completes, phase 2 (parity 0) current
        1, 0,  # arrive with count 2: pending 0: phase 2 completes, phase 3 (parity 1) current
        1,     # try_wait.parity 0 returns: phase 2, of parity 0, has completed
    ]
    assert to_numpy(probes.mbarrier_trace()).tolist() == expected


@pytest.mark.parametrize("rounds", [1, 2, 7])
def test_mbarrier_pipeline_waits_for_its_phase(be, rounds):
    # Warp 0 writes round r into stage r % 2 once the consumers have released
    # it (empty barrier, phase parity (r // 2 + 1) % 2); warp 1 reads it once all
    # 32 producers arrived (full barrier, parity (r // 2) % 2). A wait that did
    # not wait, or a parity off by one, reads another round's values.
    x = (np.arange(32 * rounds, dtype=np.float32) % 97) - 40
    want = np.zeros(32, np.float64)
    for r in range(rounds):
        want += (r + 1) * x[32 * r + (np.arange(32) + 1) % 32]
    y = probes.mbarrier_pipeline(be.xp.asarray(x))
    np.testing.assert_array_equal(to_numpy(y), want.astype(np.float32))


def test_mbarrier_pipeline_validates():
    with pytest.raises(ValueError, match="x must hold 32 floats per round"):
        probes.mbarrier_pipeline(np.zeros(33, np.float32))
    with pytest.raises(ValueError, match="kind must be one of"):
        probes.mbarrier_fault("sometimes")


# A wait that can never complete must be an error naming the kernel and the
# waiter, never a hang; what the ISA leaves undefined is an error. Host only:
# a GPU would hang or do anything.
@pytest.mark.parametrize("kind, message", [
    ("never_arrives", r"deadlock: thread \(0,0,0\) waits on the mbarrier at 0x[0-9a-f]+ for its phase of parity 0 "
                      r"to complete \(pending arrivals 1 of 2, tx-count 0\)"),
    ("spins_forever", r"deadlock: thread \(0,0,0\) spins on the mbarrier at 0x[0-9a-f]+ for its phase of parity 0 "
                      r"to complete \(pending arrivals 1 of 2, tx-count 0\)"),
    ("bytes_never_arrive", r"deadlock: thread \(0,0,0\) waits on the mbarrier .* \(pending arrivals 0 of 2, "
                           r"tx-count 128\)"),
    ("init_count_0", r"mbarrier.init: count must be in 1 \.\. 2\^20 - 1"),
    ("not_initialized", r"mbarrier.arrive on an mbarrier that was never initialized"),
    ("too_many_arrivals", r"mbarrier.arrive: 3 arrivals where the phase awaits only 2"),
    ("misaligned", r"misaligned address: mbarrier.init at 0x[0-9a-f]+, 4 bytes past a 8-byte boundary"),
    ("tx_count_overflow", r"mbarrier.expect_tx: the tx-count would pass 2\^20 - 1"),
])
def test_mbarrier_faults_are_errors(kind, message):
    fcn_cuda.use_backend("host")
    with pytest.raises(RuntimeError, match=r"kernel mbarrier_fault_probe, block \(0,0,0\): thread \(0,0,0\): " + message
                       if not message.startswith("deadlock") else
                       r"kernel mbarrier_fault_probe, block \(0,0,0\): " + message):
        probes.mbarrier_fault(kind)
