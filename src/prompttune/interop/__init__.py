"""Other libraries' formats: PEFT prompt-learning adapters, exported and imported."""
