"""``parley models pull``: fetch a neural engine's weights and say how to use them."""

from __future__ import annotations

import argparse
import asyncio

from rich.console import Console

__all__ = ["run_models"]


async def run_models(args: argparse.Namespace, console: Console) -> int:
    from parley.models import pull, resolve

    ref = resolve(args.name)  # a bad name fails before any network call
    console.print(f"fetching {args.name} from {ref.repo_id} ...")
    path = await asyncio.to_thread(pull, args.name, directory=args.dir)
    setting = str(path) if args.dir is not None else ref.setting
    section, engine = ("asr", "whisper") if ref.kind == "whisper" else ("tts", ref.kind)
    if ref.kind == "repo":
        engine = "vits"
    console.print(f"saved in {path}", markup=False, soft_wrap=True)
    console.print(
        f'use it with: --set {section}.engine={engine} --set {section}.options.model="{setting}"',
        markup=False,
        soft_wrap=True,
    )
    return 0
