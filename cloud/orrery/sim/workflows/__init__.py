"""The demo workflows, shipped as package data: greenhouse@1, greenhouse@2 and lab@3."""

from pathlib import Path

DIR = Path(__file__).resolve().parent
GREENHOUSE_V1 = DIR / "greenhouse_v1.json"  # greenhouse@1: what the virtual boards are flashed with
GREENHOUSE = DIR / "greenhouse.json"  # greenhouse@2
LAB = DIR / "lab.json"  # lab@3
