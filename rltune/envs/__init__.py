"""Multi-turn environments for agent rollouts (rltune/rollout/multiturn.py): the interface (base.py), tool
calls (tools.py) and two built-in CPU games with verifiable outcomes (guess_number.py, calculator.py)."""
