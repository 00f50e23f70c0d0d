"""The main job: `python -m deepseek_ext.demo` trains the tiny DeepSeek-V3 on a corpus shipped in
the package (see deepseek_ext.demo.cli)."""
