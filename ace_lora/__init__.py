"""ACE-LoRA: LoRA + ACE-HGNN + label-guided InfoNCE adaptation of BiomedCLIP."""
