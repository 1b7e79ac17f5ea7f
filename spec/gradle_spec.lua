local uv = require "luv"
local log = require "log"
local proc = require "vq.proc"
local gradle = require "vq.gradle"
local run = require "spec.support.run"
local files = require "sim.gradlew.files"

local EXEC = tonumber("755", 8)

local write_file, mkdir_p = files.write, files.mkdir_p

-- A stand-in for `java` that prints what `java -version` prints, on stderr.
local function fake_jdk(home, version)
  mkdir_p(home .. "/bin")
  write_file(home .. "/bin/java", ([[#!/bin/sh
echo 'openjdk version "%s" 2023-10-17' >&2
echo 'OpenJDK Runtime Environment (build %s)' >&2
]]):format(version, version), EXEC)
  return home
end

-- The deployment tool's stand-in: prints what it was given, then Gradle's output for the
-- task (or a failure for a task named fail).
local GRADLEW = [[#!/bin/sh
echo "ARGS: $*"
echo "JAVA_HOME=$JAVA_HOME"
echo "ENV_USER=${ORG_GRADLE_PROJECT_username:-unset}"
for last; do :; done
if [ "$last" = fail ]; then
  echo "> Task :configureClient"
  echo "> Task :deploy FAILED"
  echo "FAILURE: Build failed with an exception." >&2
  echo "" >&2
  echo "* What went wrong:" >&2
  echo "Execution failed for task ':deploy'." >&2
  echo "> Could not resolve all files for configuration ':deploy'." >&2
  echo "" >&2
  echo "* Try:" >&2
  echo "> Run with --stacktrace option to get the stack trace." >&2
  echo "" >&2
  echo "BUILD FAILED in 1s" >&2
  exit 1
fi
if [ "$last" = leak ]; then echo "the password is $ORG_GRADLE_PROJECT_password"; fi
echo "> Task :configureClient"
echo "> Task :$last UP-TO-DATE"
echo "BUILD SUCCESSFUL in 3s"
]]

describe("vq.gradle", function()
  local root, tools, user_home, saved

  local function setenv(name, value)
    if saved[name] == nil then saved[name] = os.getenv(name) or false end
    if value then uv.os_setenv(name, value) else uv.os_unsetenv(name) end
  end

  before_each(function()
    saved = {}
    root = assert(uv.fs_mkdtemp("/tmp/vq-gradle-XXXXXX"))
    tools = root .. "/tools"
    user_home = root .. "/gradle-home"
    mkdir_p(tools)
    mkdir_p(user_home)
    write_file(tools .. "/gradlew", GRADLEW, EXEC)
    setenv("GRADLE_USER_HOME", user_home)
    setenv("JAVA_HOME", fake_jdk(root .. "/jdk8", "1.8.0_392"))
  end)

  after_each(function()
    for name, value in pairs(saved) do
      if value then uv.os_setenv(name, value) else uv.os_unsetenv(name) end
    end
    proc.run { "rm", "-rf", root }
  end)

  local function credentials_in(path, user, password)
    mkdir_p(path:match("^(.*)/"))
    write_file(path, ("# repository\nusername=%s\npassword = %s\n"):format(user, password))
  end

  describe("task", function()
    it("runs gradlew with the cluster and the properties, and lists the tasks", function()
      credentials_in(user_home .. "/gradle.properties", "op-user-1", "s3cret-pw-1")
      local lines = {}
      local r = assert(gradle.task(tools, "configureClient", {
        cluster = "prod east", props = { b = "2", a = "x y" },
        on_line = function(l, stream) lines[#lines + 1] = stream .. ":" .. l end,
      }))
      assert.is_true(r.ok)
      assert.are.equal(0, r.code)
      assert.are.same({ ":configureClient", ":configureClient" }, r.tasks)
      assert.is_nil(r.failure)
      assert.are.equal("stdout:ARGS: -Pcluster=prod east -Pa=x y -Pb=2 configureClient", lines[1])
      assert.are.equal("stdout:JAVA_HOME=" .. root .. "/jdk8", lines[2])
      assert.matches("BUILD SUCCESSFUL in 3s", r.output)
      assert.are.equal(user_home .. "/gradle.properties", r.credentials)
      assert.are.equal(root .. "/jdk8", r.java_home)
      assert.is_true(r.duration >= 0)
      -- Gradle reads that file itself: nothing is passed in the environment
      assert.are.equal("stdout:ENV_USER=unset", lines[3])
    end)

    it("returns the failure Gradle reports", function()
      credentials_in(user_home .. "/gradle.properties", "op-user-2", "s3cret-pw-2")
      local r = assert(gradle.task(tools, "fail", { cluster = "c1", quiet = true }))
      assert.is_false(r.ok)
      assert.are.equal(1, r.code)
      assert.are.same({ ":configureClient", ":deploy" }, r.tasks)
      assert.are.equal("Execution failed for task ':deploy'.\n" ..
        "> Could not resolve all files for configuration ':deploy'.", r.failure)
      assert.matches("BUILD FAILED in 1s", r.output)
    end)

    it("says so when the tools dir or gradlew is missing or not executable", function()
      credentials_in(user_home .. "/gradle.properties", "u", "p-3")
      local r, err = gradle.task(root .. "/nowhere", "x", {})
      assert.is_nil(r)
      assert.are.equal("tools_dir", err.code)
      mkdir_p(root .. "/empty")
      r, err = gradle.task(root .. "/empty", "x", {})
      assert.is_nil(r)
      assert.are.equal("gradlew_missing", err.code)
      uv.fs_chmod(tools .. "/gradlew", tonumber("644", 8))
      r, err = gradle.task(tools, "x", {})
      assert.is_nil(r)
      assert.are.equal("gradlew_not_executable", err.code)
      assert.matches("chmod %+x", err.message)
    end)

    it("needs credentials, and says where it looked", function()
      local r, err = gradle.task(tools, "x", {})
      assert.is_nil(r)
      assert.are.equal("credentials", err.code)
      assert.matches(user_home .. "/gradle.properties", err.message, 1, true)
      assert.matches(tools .. "/.gradle/gradle.properties", err.message, 1, true)
      write_file(user_home .. "/gradle.properties", "username=only-the-user\n")
      r, err = gradle.task(tools, "x", {})
      assert.is_nil(r)
      assert.are.same({ user_home .. "/gradle.properties" }, err.incomplete)
    end)

    it("takes the credentials from the tools dir's .gradle, passed on to Gradle, never printed", function()
      credentials_in(tools .. "/.gradle/gradle.properties", "tools-user-4", "tools-pw-4")
      local lines = {}
      local r = assert(gradle.task(tools, "leak", { quiet = true,
        on_line = function(l) lines[#lines + 1] = l end }))
      assert.is_true(r.ok)
      assert.are.equal(tools .. "/.gradle/gradle.properties", r.credentials)
      assert.are.equal("ENV_USER=tools-user-4", lines[3])
      assert.are.equal("the password is ***", log.redact("the password is tools-pw-4"))
    end)

    it("looks in ~/.gradle when GRADLE_USER_HOME is not set", function()
      setenv("GRADLE_USER_HOME", false)
      setenv("HOME", root)
      credentials_in(root .. "/.gradle/gradle.properties", "home-user", "home-pw-5")
      local r = assert(gradle.task(tools, "x", { quiet = true }))
      assert.are.equal(root .. "/.gradle/gradle.properties", r.credentials)
    end)

    it("reads escapes and continuation lines in gradle.properties", function()
      write_file(user_home .. "/gradle.properties",
        "! comment\n  username : a\\:b\\u0041\npassword=first\\\n    second\\\\\n")
      local r = assert(gradle.task(tools, "leak", { quiet = true }))
      assert.is_true(r.ok)
      assert.are.equal("***", log.redact("a:bA"))
      assert.are.equal("***", log.redact("firstsecond\\"))
    end)

    it("refuses a java_home that is not Java 8", function()
      credentials_in(user_home .. "/gradle.properties", "u6", "p-6")
      local jdk17 = fake_jdk(root .. "/jdk17", "17.0.2")
      local r, err = gradle.task(tools, "x", { java_home = jdk17 })
      assert.is_nil(r)
      assert.are.equal("java8", err.code)
      assert.matches("17.0.2", err.message, 1, true)
    end)

    it("never shows the password in the console, even when the build prints it", function()
      credentials_in(tools .. "/.gradle/gradle.properties", "tools-user-7", "Very-Secret-77")
      local script = ([[
        local gradle = require "vq.gradle"
        local r = assert(gradle.task(%q, "leak", {}))
        print(r.output)
      ]]):format(tools)
      local res = run.vq { "-e", script, env = {
        GRADLE_USER_HOME = user_home, JAVA_HOME = root .. "/jdk8", NO_COLOR = "1" } }
      assert.are.equal(0, res.status, res.stderr)
      local all = res.stdout .. res.stderr
      assert.is_nil(all:find("Very-Secret-77", 1, true))
      assert.is_nil(all:find("tools-user-7", 1, true))
      assert.matches("the password is ***", all, 1, true)
      assert.matches("==> gradle leak", all, 1, true)
      assert.matches("> Task :configureClient", all, 1, true)
    end)
  end)

  describe("java8", function()
    local function path_with_java(version)
      local home = fake_jdk(root .. "/path-jdk", version)
      setenv("PATH", home .. "/bin:" .. os.getenv("PATH"))
    end

    it("takes JAVA_HOME when it is a Java 8", function()
      local j = assert(gradle.java8 { jvm_root = root .. "/none" })
      assert.are.equal(root .. "/jdk8", j.home)
      assert.are.equal("1.8.0_392", j.version)
      assert.are.equal("JAVA_HOME", j.source)
    end)

    it("picks the Java 8 among several JDKs", function()
      setenv("JAVA_HOME", fake_jdk(root .. "/jdk11", "11.0.21"))
      path_with_java("17.0.9")
      local jvm = root .. "/jvm"
      fake_jdk(jvm .. "/java-17-openjdk-amd64", "17.0.9")
      fake_jdk(jvm .. "/java-8-openjdk-amd64", "1.8.0_402")
      fake_jdk(jvm .. "/zulu-21", "21.0.1")
      local j = assert(gradle.java8 { jvm_root = jvm })
      assert.are.equal(jvm .. "/java-8-openjdk-amd64", j.home)
      assert.are.equal("1.8.0_402", j.version)
    end)

    it("finds the Java 8 in PATH", function()
      setenv("JAVA_HOME", false)
      path_with_java("1.8.0_345")
      local j = assert(gradle.java8 { jvm_root = root .. "/none" })
      assert.are.equal(uv.fs_realpath(root .. "/path-jdk"), j.home)
      assert.are.equal("PATH", j.source)
    end)

    it("says clearly when there is no Java 8, and what it found", function()
      setenv("JAVA_HOME", fake_jdk(root .. "/jdk17", "17.0.2"))
      path_with_java("1.80.0")
      local jvm = root .. "/jvm"
      fake_jdk(jvm .. "/jdk-21", "21")
      local j, err = gradle.java8 { jvm_root = jvm }
      assert.is_nil(j)
      assert.are.equal("java8", err.code)
      assert.matches("needs Java 8", err.message)
      assert.matches("17.0.2", err.message, 1, true)
      assert.matches("21", err.message, 1, true)
      assert.are.equal(3, #err.found)
    end)

    it("runs gradlew with the Java 8 it picked", function()
      credentials_in(user_home .. "/gradle.properties", "u8", "p-8")
      setenv("JAVA_HOME", fake_jdk(root .. "/jdk17", "17.0.2"))
      local jvm = root .. "/jvm"
      fake_jdk(jvm .. "/java-8", "1.8.0_402")
      local lines = {}
      local r = assert(gradle.task(tools, "x", { jvm_root = jvm, quiet = true,
        on_line = function(l) lines[#lines + 1] = l end }))
      assert.are.equal(jvm .. "/java-8", r.java_home)
      assert.are.equal("JAVA_HOME=" .. jvm .. "/java-8", lines[2])
    end)
  end)
end)
