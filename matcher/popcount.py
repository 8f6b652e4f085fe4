"""Numba intrinsics over single LLVM instructions for the MCC kernels: popcount, prefetch.

The MCC bit similarity is three population counts per cylinder word. Emitting LLVM's
``ctpop`` directly lets the backend use the ``popcnt`` instruction (or a vector popcount
where the CPU has one) instead of the bit-twiddling fallback a plain Python loop compiles to.

A 1:N search reads each gallery template's full cylinders at scattered rows (the pairs
its cheap stage ranks again), which the hardware prefetcher does not foresee in a gallery
far larger than the caches; :func:`prefetch` asks for the next template's rows while the
current one is scored.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def popcount64(typingctx, word):
    """Number of set bits of a uint64 (usable only inside Numba-compiled code)."""
    if word != types.uint64:
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return sig, codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Hint the cache to load the element at flat ``index`` of a C-contiguous array.

    No effect on results, and no fault for any index (usable only inside Numba code).
    """
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        flat = context.cast(builder, args[1], signature.args[1], types.intp)
        address = builder.bitcast(builder.gep(data, [flat]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer(), i32, i32, i32]),
            "llvm.prefetch.p0i8",
        )
        # read, high temporal locality (keep in all cache levels), data cache
        builder.call(fn, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen
