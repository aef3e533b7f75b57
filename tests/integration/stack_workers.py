"""A hello-world worker for every stack, written in the stack's language: it prints a greeting,
the language's version, its payload and config files (read through PAYLOAD_FILE and
CONFIG_FILE), and the first two legacy arguments (``-payload FILE``)."""

from __future__ import annotations

from dataclasses import dataclass

from dockworker.engine import DockerEngine
from dockworker.stacks import Stack
from tests.conftest import require


@dataclass(frozen=True, kw_only=True)
class HelloWorld:
    runtime: str
    file_name: str
    source: str
    # Lines the log must hold besides the common ones.
    expected: tuple[str, ...] = ()


SHELL = """\
echo "hello from $STACK_NAME"
echo "payload=$(cat "$PAYLOAD_FILE")"
echo "config=$(cat "$CONFIG_FILE")"
echo "args=$1 $2"
"""

PYTHON = """\
import json, os, sys
print("hello from python")
print("version=%d.%d.%d" % sys.version_info[:3])
payload = open(os.environ["PAYLOAD_FILE"]).read()
print("payload=" + payload)
print("config=" + open(os.environ["CONFIG_FILE"]).read())
print("args=" + " ".join(sys.argv[1:3]))
print("name=" + json.loads(payload)["name"])
"""

NODE = """\
const fs = require("fs");
console.log("hello from node");
console.log("version=" + process.versions.node);
const payload = fs.readFileSync(process.env.PAYLOAD_FILE, "utf8");
console.log("payload=" + payload);
console.log("config=" + fs.readFileSync(process.env.CONFIG_FILE, "utf8"));
console.log("args=" + process.argv.slice(2, 4).join(" "));
console.log("name=" + JSON.parse(payload).name);
"""

RUBY = """\
require "json"
puts "hello from ruby"
puts "version=#{RUBY_VERSION}"
payload = File.read(ENV["PAYLOAD_FILE"])
puts "payload=#{payload}"
puts "config=#{File.read(ENV["CONFIG_FILE"])}"
puts "args=#{ARGV[0]} #{ARGV[1]}"
puts "name=#{JSON.parse(payload)["name"]}"
"""

PHP = """\
<?php
echo "hello from php\\n";
echo "version=" . PHP_VERSION . "\\n";
$payload = file_get_contents(getenv("PAYLOAD_FILE"));
echo "payload=" . $payload . "\\n";
echo "config=" . file_get_contents(getenv("CONFIG_FILE")) . "\\n";
echo "args=" . $argv[1] . " " . $argv[2] . "\\n";
echo "name=" . json_decode($payload, true)["name"] . "\\n";
"""

PERL = """\
use strict;
use warnings;
use JSON::PP;
sub slurp { local $/; open(my $fh, "<", $_[0]) or die "$_[0]: $!"; return <$fh>; }
print "hello from perl\\n";
printf "version=%vd\\n", $^V;
my $payload = slurp($ENV{PAYLOAD_FILE});
print "payload=$payload\\n";
print "config=", slurp($ENV{CONFIG_FILE}), "\\n";
print "args=$ARGV[0] $ARGV[1]\\n";
print "name=", decode_json($payload)->{name}, "\\n";
"""

JAVA = """\
import java.nio.file.Files;
import java.nio.file.Path;

public class Hello {
    public static void main(String[] args) throws Exception {
        System.out.println("hello from java");
        System.out.println("version=" + Runtime.version());
        System.out.println("payload=" + Files.readString(Path.of(System.getenv("PAYLOAD_FILE"))));
        System.out.println("config=" + Files.readString(Path.of(System.getenv("CONFIG_FILE"))));
        System.out.println("args=" + args[0] + " " + args[1]);
    }
}
"""

GO = """\
package main

import (
\t"encoding/json"
\t"fmt"
\t"os"
\t"runtime"
\t"strings"
)

func main() {
\tpayload, _ := os.ReadFile(os.Getenv("PAYLOAD_FILE"))
\tconfig, _ := os.ReadFile(os.Getenv("CONFIG_FILE"))
\tvar decoded struct{ Name string }
\t_ = json.Unmarshal(payload, &decoded)
\tfmt.Println("hello from go")
\tfmt.Println("version=" + strings.TrimPrefix(runtime.Version(), "go"))
\tfmt.Println("payload=" + string(payload))
\tfmt.Println("config=" + string(config))
\tfmt.Println("args=" + os.Args[1] + " " + os.Args[2])
\tfmt.Println("name=" + decoded.Name)
}
"""

RUST = """\
use std::{env, fs, process::Command};

fn main() {
    println!("hello from rust");
    let rustc = Command::new("rustc").arg("--version").output().expect("rustc");
    let version = String::from_utf8_lossy(&rustc.stdout).split_whitespace().nth(1).unwrap_or("").to_string();
    println!("version={}", version);
    println!("payload={}", fs::read_to_string(env::var("PAYLOAD_FILE").unwrap()).unwrap());
    println!("config={}", fs::read_to_string(env::var("CONFIG_FILE").unwrap()).unwrap());
    let args: Vec<String> = env::args().collect();
    println!("args={} {}", args[1], args[2]);
}
"""

R = """\
cat("hello from r\\n")
cat("version=", R.version$major, ".", R.version$minor, "\\n", sep = "")
slurp <- function(path) readChar(path, file.info(path)$size)
cat("payload=", slurp(Sys.getenv("PAYLOAD_FILE")), "\\n", sep = "")
cat("config=", slurp(Sys.getenv("CONFIG_FILE")), "\\n", sep = "")
args <- commandArgs(trailingOnly = TRUE)
cat("args=", args[1], " ", args[2], "\\n", sep = "")
"""

BUSYBOX = "STACK_NAME=busybox\n" + SHELL + 'echo "version=$(busybox | head -n 1 | sed "s/^BusyBox v//")"\n'

DEBIAN = (
    "#!/bin/bash\nset -euo pipefail\nSTACK_NAME=debian\n"
    + SHELL
    + 'echo "version=$(cat /etc/debian_version)"\necho "bash=${BASH_VERSINFO[0]}"\n'
)

FFMPEG = (
    "set -euo pipefail\nSTACK_NAME=ffmpeg\n"
    + SHELL
    + 'echo "version=$(ffmpeg -version | head -n 1 | cut -d " " -f 3)"\n'
    + 'red="$TASK_DIR/red.png"\n'
    + 'ffmpeg -hide_banner -loglevel error -f lavfi -i color=c=red:s=16x16:d=1 -frames:v 1 "$red"\n'
    + 'ffprobe -v error -show_entries stream=width,height -of default=noprint_wrappers=1 "$red"\n'
)

IMAGEMAGICK = (
    "set -euo pipefail\nSTACK_NAME=imagemagick\n"
    + SHELL
    + 'echo "version=$(convert -version | head -n 1 | cut -d " " -f 3)"\n'
    + 'convert -size 1x1 xc:red "$TASK_DIR/red.png"\n'
    + 'identify -format "identified=%m %wx%h %[pixel:p{0,0}]\\n" "$TASK_DIR/red.png"\n'
)

HELLO_WORLDS: dict[str, HelloWorld] = {
    "busybox": HelloWorld(runtime="sh", file_name="hello.sh", source=BUSYBOX),
    "debian": HelloWorld(runtime="bash", file_name="hello.sh", source=DEBIAN, expected=("bash=5",)),
    "python": HelloWorld(runtime="python", file_name="hello.py", source=PYTHON, expected=("name=Ada",)),
    "node": HelloWorld(runtime="node", file_name="hello.js", source=NODE, expected=("name=Ada",)),
    "ruby": HelloWorld(runtime="ruby", file_name="hello.rb", source=RUBY, expected=("name=Ada",)),
    "php": HelloWorld(runtime="php", file_name="hello.php", source=PHP, expected=("name=Ada",)),
    "perl": HelloWorld(runtime="perl", file_name="hello.pl", source=PERL, expected=("name=Ada",)),
    "java": HelloWorld(runtime="java", file_name="Hello.java", source=JAVA),
    "go": HelloWorld(runtime="go", file_name="hello.go", source=GO, expected=("name=Ada",)),
    "rust": HelloWorld(runtime="rust", file_name="hello.rs", source=RUST),
    "ffmpeg": HelloWorld(
        runtime="ffmpeg", file_name="hello.sh", source=FFMPEG, expected=("width=16", "height=16")
    ),
    "imagemagick": HelloWorld(
        runtime="imagemagick",
        file_name="hello.sh",
        source=IMAGEMAGICK,
        expected=("identified=PNG 1x1 srgb(255,0,0)",),
    ),
    "r": HelloWorld(runtime="r", file_name="hello.R", source=R),
}

PAYLOAD = '{"name": "Ada"}'


def expected_lines(stack: Stack) -> list[str]:
    """Lines (or line prefixes, for the version) the hello world of stack prints."""
    return [
        f"hello from {stack.name}",
        f"version={stack.version}",
        f"payload={PAYLOAD}",
        f"config=cfg-{stack.name}",
        "args=-payload /mnt/task/payload.json",
        *HELLO_WORLDS[stack.name].expected,
    ]


def require_stack(engine: DockerEngine, stack: Stack) -> None:
    """Skip when the stack's image is not built, except in CI, where every stack must be."""
    require(
        engine.image_exists(stack.image), f"{stack.image} missing: run 'dockworker stacks build {stack.name}'"
    )
