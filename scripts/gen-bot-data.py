#!/usr/bin/env python3
"""Regenerates the bot catalog's third-party data files from their upstream lists:

  crates/palisade-intel/data/crawler-user-agents.txt  <- monperrus/crawler-user-agents (MIT)
  crates/palisade-intel/data/ai-robots.txt            <- ai-robots-txt/ai.robots.txt (MIT)

Usage: scripts/gen-bot-data.py [TESTDATA_DIR]   (default ../shared/testdata)
The hand-written catalog (data/bots.txt) is not touched. Review the diff before committing.
"""
import json, re, sys, pathlib

root = pathlib.Path(__file__).resolve().parent.parent
td = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else root.parent / "shared" / "testdata")
out = root / "crates" / "palisade-intel" / "data"

cu = json.loads((td / "ua" / "crawler-user-agents.json").read_text())
prio = [("ai-crawler", "ai_training"), ("search-engine", "search_engine"), ("scanner", "scanner"),
        ("browser-automation", "headless_browser"), ("http-library", "http_library"),
        ("social-preview", "social_preview"), ("feed-reader", "feed_reader"),
        ("monitoring", "monitoring"), ("seo", "seo"), ("archiver", "archiver"),
        ("advertising", "other"), ("academic", "other")]
lines = ["# Crawler patterns from monperrus/crawler-user-agents @ 7c7f9f2 (crawler-user-agents.json),",
         "# MIT License, Copyright (c) 2018 Martin Monperrus and contributors. Patterns and tags only; the",
         "# category is ours, from the tags. Patterns are case-sensitive as upstream, hence (?-i:...).",
         "# Regenerate with scripts/gen-bot-data.py when updating the upstream list.",
         "# category | name | pattern"]
for e in cu:
    tags = e.get("tags", [])
    cat = next((c for t, c in prio if t in tags), "other")
    pat = e["pattern"]
    name = re.sub(r"\\(.)", r"\1", pat)
    name = re.sub(r"[\^\$\(\)\[\]\|\?\*\+]", "", name).strip() or pat
    lines.append(f"{cat} | {name.replace('|', '/')[:60]} | (?-i:{pat})")
(out / "crawler-user-agents.txt").write_text("\n".join(lines) + "\n")

ai = json.loads((td / "goodbots" / "ai-robots.json").read_text())
generic = {"Code", "Cursor", "Operator", "Spider", "Trae", "LCC", "YaK", "Devin", "UseAI", "OpenAI",
           "Scrapy", "NovaAct", "Anomura", "Andibot", "Cotoyogi", "HenkBot", "Thinkbot", "Lightpanda",
           "newsai", "wpbot", "Amzn-User", "amazon-kendra"}
lines = ["# AI crawlers and agents, derived from ai-robots-txt/ai.robots.txt @ 738c80d (robots.json),",
         "# MIT License, Copyright (c) 2024 ai.robots.txt contributors. Names and their purpose only;",
         "# the category is ours, from the listed function. Names that are ordinary words (Code, Cursor,",
         "# Operator, Spider, ...) are left out: as bare words they would match ordinary clients; Amzn-User",
         "# and amazon-kendra are in bots.txt with tighter patterns.",
         "# category | name | pattern (case-insensitive regex)"]
for name, v in sorted(ai.items(), key=lambda kv: -len(kv[0])):
    if name in generic:
        continue
    f = (v.get("function") or "").lower()
    cat = "ai_search" if "search" in f else "ai_assistant" if ("assistant" in f or "agent" in f or "user" in f) else "ai_training"
    pat = re.escape(name).replace("\\ ", " ").replace("\\-", "-")
    lines.append(f"{cat} | {name} | (?:^|[^a-z0-9]){pat}(?:$|[^a-z0-9])")
(out / "ai-robots.txt").write_text("\n".join(lines) + "\n")
print("wrote", out / "crawler-user-agents.txt", "and", out / "ai-robots.txt")
