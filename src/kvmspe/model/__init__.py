"""The reference kernel: modelled host, VM and VCPU, the ordered rules, pinning."""
