// fiber.h: the context switch under the emulator's CUDA threads.
//
// A fiber is a stack plus a saved stack pointer. fcn_emu_switch(&from, to)
// pushes the callee-saved registers and the floating-point control words on
// the current stack, stores the stack pointer in *from, loads `to` and pops
// the other fiber's registers. It costs ~8 ns against ~250 ns for
// swapcontext, which also saves the signal mask with a system call.
#pragma once

#include <cstddef>

#if !defined(__x86_64__)
#error "the fcn_cuda host emulation has a context switch for x86-64 only (csrc/emu/fiber.cpp)"
#endif

namespace fcn_emu {

extern "C" void fcn_emu_switch(void** save_sp, void* load_sp);

// Prepares a stack [base, base + size) so that switching to the returned
// stack pointer calls entry(arg) on it. entry must never return.
void* fiber_prepare(void* base, size_t size, void (*entry)(void*), void* arg);

}  // namespace fcn_emu
