// fiber.cpp: the x86-64 System V context switch (see fiber.h).
#include "fiber.h"

#include <cstdint>

// Frame saved on a suspended fiber's stack, from its saved stack pointer up:
//   [sp+0]  MXCSR (4 bytes) and x87 control word (2 bytes), 8-byte slot
//   [sp+8]  r15, r14, r13, r12, rbx, rbp
//   [sp+56] return address
asm(R"(
    .text
    .globl fcn_emu_switch
    .type fcn_emu_switch, @function
fcn_emu_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size fcn_emu_switch, .-fcn_emu_switch

    .globl fcn_emu_fiber_start
    .type fcn_emu_fiber_start, @function
fcn_emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size fcn_emu_fiber_start, .-fcn_emu_fiber_start
)");

extern "C" void fcn_emu_fiber_start();

namespace fcn_emu {

void* fiber_prepare(void* base, size_t size, void (*entry)(void*), void* arg) {
    uintptr_t top = (reinterpret_cast<uintptr_t>(base) + size) & ~uintptr_t(15);
    // After the switch pops 64 bytes, fcn_emu_fiber_start runs with
    // rsp = sp + 64; its `call` needs rsp % 16 == 0, so sp is 16-aligned.
    uint64_t* sp = reinterpret_cast<uint64_t*>(top - 64 - 16);
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    sp[0] = uint64_t(mxcsr) | (uint64_t(fpucw) << 32);
    sp[1] = 0;                                           // r15
    sp[2] = 0;                                           // r14
    sp[3] = reinterpret_cast<uint64_t>(entry);           // r13
    sp[4] = reinterpret_cast<uint64_t>(arg);             // r12
    sp[5] = 0;                                           // rbx
    sp[6] = 0;                                           // rbp
    sp[7] = reinterpret_cast<uint64_t>(&fcn_emu_fiber_start);
    return sp;
}

}  // namespace fcn_emu
