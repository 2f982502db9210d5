/*
 * ctx.c — switching between a scheduler and its processes.
 *
 * On x86-64 the switch is a few instructions of assembly: push the
 * callee-saved registers and the SSE/x87 control words, store the stack
 * pointer, load the other one, pop. It touches no signal mask, which is why
 * it is an order of magnitude cheaper than swapcontext(). Other
 * architectures fall back to ucontext (and to one stack per process).
 */
#include "dx_internal.h"

#if DX_CTX_ASM

/* void dx__ctx_swap_sp(void **save_sp, void *load_sp) */
__asm__(".text\n"
        ".globl dx__ctx_swap_sp\n"
        ".hidden dx__ctx_swap_sp\n"
        ".type dx__ctx_swap_sp,@function\n"
        "dx__ctx_swap_sp:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    subq $8, %rsp\n"
        "    stmxcsr (%rsp)\n"
        "    fnstcw 4(%rsp)\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    ldmxcsr (%rsp)\n"
        "    fldcw 4(%rsp)\n"
        "    addq $8, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size dx__ctx_swap_sp, .-dx__ctx_swap_sp\n"
        /* First stop of a new process: align the stack as a call expects
         * and enter C. dx__proc_entry never returns. */
        ".globl dx__ctx_start\n"
        ".hidden dx__ctx_start\n"
        ".type dx__ctx_start,@function\n"
        "dx__ctx_start:\n"
        "    andq $-16, %rsp\n"
        "    call dx__proc_entry\n"
        "    ud2\n"
        ".size dx__ctx_start, .-dx__ctx_start\n"
        ".section .note.GNU-stack,\"\",@progbits\n"
        ".text\n");

void dx__ctx_swap_sp(void **save_sp, void *load_sp);
void dx__ctx_start(void);

void dx__ctx_make(dx__ctx *ctx, void *stack_lo, size_t size)
{
    uintptr_t top = ((uintptr_t)stack_lo + size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)top;
    uint32_t mxcsr;
    uint16_t fpucw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpucw));
    *--sp = 0; /* padding: keeps the layout even */
    *--sp = (uint64_t)(uintptr_t)dx__ctx_start; /* popped by ret */
    for (int i = 0; i < 6; i++)
        *--sp = 0; /* rbp rbx r12 r13 r14 r15 */
    *--sp = (uint64_t)mxcsr | ((uint64_t)fpucw << 32);
    ctx->sp = sp;
}

void dx__ctx_swap(dx__ctx *from, dx__ctx *to)
{
    dx__ctx_swap_sp(&from->sp, to->sp);
}

#else

static void ucontext_start(void)
{
    dx__proc_entry();
}

void dx__ctx_make(dx__ctx *ctx, void *stack_lo, size_t size)
{
    getcontext(&ctx->uc);
    ctx->uc.uc_stack.ss_sp = stack_lo;
    ctx->uc.uc_stack.ss_size = size;
    ctx->uc.uc_link = NULL;
    makecontext(&ctx->uc, ucontext_start, 0);
}

void dx__ctx_swap(dx__ctx *from, dx__ctx *to)
{
    swapcontext(&from->uc, &to->uc);
}

#endif
