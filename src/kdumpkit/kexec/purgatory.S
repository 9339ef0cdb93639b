/*
 * kdumpkit's x86_64 purgatory: the code kexec_load's entry point runs after
 * the crashed kernel's relocate_kernel has switched to the kexec identity
 * page tables and jumped here with interrupts off, in 64-bit mode, with
 * the crashed kernel's GDT invalidated (any segment load would fault).
 *
 * It does only what the 64-bit boot protocol needs (boot.rst):
 *   1. lgdt its own GDT: null, null, 0x10 flat 64-bit code, 0x18 flat data;
 *   2. a small stack inside this image;
 *   3. far return into CS=0x10, DS/ES/SS=0x18, FS/GS=0;
 *   4. %rsi = boot_params, %rbx = 0 (boot CPU), the rest zero,
 *      jump to the kernel's 64-bit entry (protected-mode load address + 0x200).
 * Position independent: every address comes RIP-relative or from the
 * parameter block the loader patches (PARAM_* offsets below, fixed by .org).
 * Assemble: as --64 -o p.o purgatory.S && objcopy -O binary -j .text p.o p.bin
 */
	.text
	.code64
	.globl	purgatory_start
purgatory_start:
	cli
	cld
	leaq	gdt(%rip), %rax
	movq	%rax, gdt_base(%rip)		/* the GDT's own address: known only at run time */
	lgdt	gdt_desc(%rip)
	leaq	stack_end(%rip), %rsp
	leaq	reload_cs(%rip), %rax
	pushq	$0x10				/* __BOOT_CS */
	pushq	%rax
	lretq
reload_cs:
	movl	$0x18, %eax			/* __BOOT_DS */
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	xorl	%eax, %eax
	movl	%eax, %fs
	movl	%eax, %gs
	movq	param_boot_params(%rip), %rsi
	movq	param_entry(%rip), %rax
	xorl	%ebx, %ebx
	xorl	%ecx, %ecx
	xorl	%edx, %edx
	xorl	%edi, %edi
	xorl	%ebp, %ebp
	jmpq	*%rax

	.org	0x80
gdt:
	.quad	0x0000000000000000		/* 0x00 null */
	.quad	0x0000000000000000		/* 0x08 unused */
	.quad	0x00af9a000000ffff		/* 0x10 code: 64-bit (L), present, ring 0, execute/read */
	.quad	0x00cf92000000ffff		/* 0x18 data: flat 4 GiB, present, ring 0, read/write */
gdt_end:

	.org	0xa0
	.word	0
gdt_desc:
	.word	gdt_end - gdt - 1		/* limit */
gdt_base:
	.quad	0				/* base, written at run time */

	.org	0xb0
param_magic:
	.ascii	"kdkpurg1"			/* PARAM_MAGIC */
param_entry:
	.quad	0				/* PARAM_ENTRY: kernel 64-bit entry, physical */
param_boot_params:
	.quad	0				/* PARAM_BOOT_PARAMS: zero page, physical */

	.org	0x100
stack:
	.fill	0x100, 1, 0
stack_end:
