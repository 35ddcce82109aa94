import ast, re, sys, sysconfig, pathlib, hashlib
root = pathlib.Path(sysconfig.get_paths()["stdlib"])
out = set()
for f in sorted(root.rglob("*.py")):
    rel = f.relative_to(root).parts
    if any(p in ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo") for p in rel): continue
    try: tree = ast.parse(f.read_text(encoding="utf-8"))
    except Exception: continue
    for node in ast.walk(tree):
        if isinstance(node,(ast.Module,ast.ClassDef,ast.FunctionDef,ast.AsyncFunctionDef)):
            d = ast.get_docstring(node)
            if not d: continue
            for para in re.split(r"\n\s*\n", d):
                if re.search(r"^\s*(>>>|\.\.\.|[-*]\s|\w+\s*:\s*$)", para, re.M): continue
                text = " ".join(para.split())
                for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                    w = s.split()
                    if 6 <= len(w) <= 40 and s[0].isupper() and s[-1] in ".!?" and not re.search(r"[{}\[\]=<>|\\]|__|\w\(\)|::", s):
                        out.add(s)
s = sorted(out, key=lambda x: hashlib.sha1(x.encode()).hexdigest())
print(len(s), file=sys.stderr)
print("\n".join(s))
