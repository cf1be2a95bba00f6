//! QEMU VMs (TCG) on tap devices for the testbed: see the module docs once built.
