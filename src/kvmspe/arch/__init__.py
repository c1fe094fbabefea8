"""The Arm architecture, nothing of KVM: the SPE buffer registers, the MaxBuffSize codec, stage-1 tables."""
