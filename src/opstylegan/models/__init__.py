"""Networks: mapping, synthesis, generator, discriminator."""
