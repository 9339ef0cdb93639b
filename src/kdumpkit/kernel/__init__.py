"""Kernel knowledge from the dump alone (no vmlinux), drgn-style helper modules.

* :mod:`~kdumpkit.kernel.vmcoreinfo` — typed VMCOREINFO (``VmcoreInfo``);
* :mod:`~kdumpkit.kernel.paging` — page-table walks described as data (``PagingMode``, ``walk``);
* :mod:`~kdumpkit.kernel.x86_64` — the x86_64 address space (text map, direct map, 4/5-level tables);
* :mod:`~kdumpkit.kernel.memory` — ``KernelMemory`` and ``kernel_memory(dump)``;
* :mod:`~kdumpkit.kernel.printk` — the kernel log in all three layouts and its output formats;
* :mod:`~kdumpkit.kernel.facts` — ``crash_facts(dump)`` for ``kdumpkit info``;
* :mod:`~kdumpkit.kernel.testing` — a synthetic kernel for tests.
"""
