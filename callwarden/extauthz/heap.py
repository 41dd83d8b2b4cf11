"""Keep the serving process's long-lived heap out of the garbage collector's full passes.

A full (generation 2) collection walks every object the interpreter tracks and holds the GIL
while it does, so every check waits for it. A serving ext_authz process tracks ~65,000 objects
once its bundle is compiled (modules, the compiled policies, the servers' state), and a full
pass over them took 37 ms on the bench machine (54 ms with 10,000 validated tokens cached);
such passes showed up as 20-24 ms stalls of the check loop (bench/README.md, "The latency target
on this machine"). Almost none of that heap ever becomes garbage, so `settle` collects what is
garbage now and moves everything that survives to the permanent generation (`gc.freeze`): later
collections only walk what was allocated since.

A frozen object that later becomes cyclic garbage would never be collected: an old bundle
swapped out is exactly that. So `settle` first unfreezes, collects (the pause happens here,
once per configuration change, instead of at random under load), and freezes again.
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect the garbage there is, then freeze what survives; call when the heap has just
    taken its long-lived shape (serving starts, a bundle is swapped in)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
