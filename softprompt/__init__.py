"""softprompt: prompt tuning on a frozen language model."""
