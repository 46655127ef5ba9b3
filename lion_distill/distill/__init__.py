"""White-box distillation from an open-weight teacher: its token signal for the answers a stage has
(signal), what the teacher's engine and vocabulary must be for it (teacher), the judge-free
discriminator (divergence) and the distill job (job): teacher answers a pool, the student distils."""
