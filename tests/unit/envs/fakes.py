"""Environments for the multi-turn engine tests, named by file path like a user's own env would be."""

import asyncio
import time


class PerTurn:
    """Rewards 0.25 per turn (rows' `bonus` column added on the last), done after `turns` turns.
    `hang_on` / `raise_on`: a secret whose step() sleeps 30 s / raises; `fail_reset`: a secret whose reset raises."""

    def __init__(self, turns: int = 3, hang_on: int = -1, raise_on: int = -1, fail_reset: int = -1):
        self.turns, self.hang_on, self.raise_on, self.fail_reset = turns, hang_on, raise_on, fail_reset
        self.t = 0

    def reset(self, row):
        self.secret = int(row["secret"])
        if self.secret == self.fail_reset:
            raise ConnectionError("sandbox unavailable")
        return f"[{self.secret}]"

    def step(self, action):
        if self.secret == self.hang_on:
            time.sleep(30)
        if self.secret == self.raise_on:
            raise ValueError(f"cannot parse {action!r}")
        self.t += 1
        done = self.t >= self.turns
        return f"<{self.t}>", 0.25 + (self.secret if done else 0), done, {}


class AsyncGuess:
    """An async env: answers 'ok' and ends when the action equals the secret."""

    async def reset(self, row):
        await asyncio.sleep(0)
        self.secret = str(row["secret"])
        return ""

    async def step(self, action):
        await asyncio.sleep(0.001)
        return " no;", float(action == self.secret), action == self.secret, {}


class FlakyInit(AsyncGuess):
    """Every second instance fails to build (e.g. a sandbox that did not start)."""

    built = 0

    def __init__(self):
        FlakyInit.built += 1
        if FlakyInit.built % 2 == 0:
            raise RuntimeError("no sandbox")
