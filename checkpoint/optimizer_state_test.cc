#include "checkpoint/optimizer_state.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "checkpoint/load_report.h"
#include "checkpoint/module_state.h"
#include "checkpoint/value.h"

namespace fabric {
namespace {

using torch::optim::Adam;
using torch::optim::AdamOptions;
using torch::optim::AdamParamState;
using torch::optim::AdamW;
using torch::optim::AdamWOptions;
using torch::optim::Optimizer;
using torch::optim::OptimizerParamGroup;
using torch::optim::SGD;
using torch::optim::SGDOptions;

std::string g_python;  // argv[1]: the venv interpreter

// ---------------------------------------------------------------------------
// The Python side: the same model, hyperparameters and gradients in
// torch.optim, and a line format both sides write and read. One line per
// leaf: SECTION \t KEY1 \t KEY2 \t LEAF, with sections P (model state), S
// (optimizer 'state') and G (optimizer 'param_groups'); LEAF is a typed token
// list: none | bool 0/1 | int N | float X | tuple N LEAF.. | list N LEAF.. |
// tensor DTYPE NDIM DIMS.. VALUES..

constexpr char kScript[] = R"py(
import ast, math, sys, torch

def init_value(k, i): return ((i * 7 + k * 3) % 11 - 5) / 8.0
def grad_value(k, i, s): return ((i * 5 + k * 2 + s * 3) % 13 - 6) / 16.0

def pattern(shape, f):
    n = math.prod(shape)
    return torch.tensor([f(i) for i in range(n)], dtype=torch.float32).reshape(shape)

def make(config):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            p.copy_(pattern(list(p.shape), lambda i: init_value(k, i)))
    cls = getattr(torch.optim, config['cls'])
    if 'group1' in config:
        params = [{'params': list(model[0].parameters())},
                  dict(params=list(model[1].parameters()), **config['group1'])]
    else:
        params = model.parameters()
    return model, cls(params, **config['kw'])

def steps(model, opt, first, count):
    for s in range(first, first + count):
        for k, p in enumerate(model.parameters()):
            p.grad = pattern(list(p.shape), lambda i: grad_value(k, i, s))
        opt.step()

def leaf(v):
    if v is None: return ['none']
    if isinstance(v, bool): return ['bool', '1' if v else '0']
    if isinstance(v, int): return ['int', str(v)]
    if isinstance(v, float): return ['float', repr(v)]
    if isinstance(v, (tuple, list)):
        out = ['tuple' if isinstance(v, tuple) else 'list', str(len(v))]
        for x in v: out += leaf(x)
        return out
    if isinstance(v, torch.Tensor):
        out = ['tensor', str(v.dtype).replace('torch.', ''), str(v.dim())] + [str(s) for s in v.shape]
        for x in v.detach().reshape(-1).tolist():
            out.append(repr(float(x)) if v.is_floating_point() else str(int(x)))
        return out
    raise TypeError(type(v))

def dump(model, opt):
    lines = [['P', k, '-', v] for k, v in model.state_dict().items()]
    sd = opt.state_dict()
    lines += [['S', str(i), k, v] for i, st in sd['state'].items() for k, v in st.items()]
    lines += [['G', str(g), k, v] for g, group in enumerate(sd['param_groups']) for k, v in group.items()]
    return ''.join('\t'.join(line[:3] + [' '.join(leaf(line[3]))]) + '\n' for line in lines)

def parse_leaf(t, i):
    kind = t[i]
    if kind == 'none': return None, i + 1
    if kind == 'bool': return t[i + 1] == '1', i + 2
    if kind == 'int': return int(t[i + 1]), i + 2
    if kind == 'float': return float(t[i + 1]), i + 2
    if kind in ('tuple', 'list'):
        n, i, items = int(t[i + 1]), i + 2, []
        for _ in range(n):
            x, i = parse_leaf(t, i)
            items.append(x)
        return (tuple(items) if kind == 'tuple' else items), i
    if kind == 'tensor':
        dtype, nd = getattr(torch, t[i + 1]), int(t[i + 2])
        shape = [int(x) for x in t[i + 3:i + 3 + nd]]
        i += 3 + nd
        n = math.prod(shape)
        conv = float if dtype.is_floating_point else int
        return torch.tensor([conv(x) for x in t[i:i + n]], dtype=dtype).reshape(shape), i + n
    raise ValueError(kind)

def load(text):
    model_sd, state, groups = {}, {}, []
    for line in text.splitlines():
        section, k1, k2, payload = line.split('\t')
        value, _ = parse_leaf(payload.split(' '), 0)
        if section == 'P': model_sd[k1] = value
        elif section == 'S': state.setdefault(int(k1), {})[k2] = value
        else:
            while len(groups) <= int(k1): groups.append({})
            groups[int(k1)][k2] = value
    return model_sd, {'state': state, 'param_groups': groups}

mode, config = sys.argv[1], ast.literal_eval(sys.argv[2])
model, opt = make(config)
if mode == 'run':
    steps(model, opt, 0, int(sys.argv[3]))
else:  # resume FILE FIRST COUNT
    model_sd, opt_sd = load(open(sys.argv[3]).read())
    model.load_state_dict(model_sd)
    opt.load_state_dict(opt_sd)
    steps(model, opt, int(sys.argv[4]), int(sys.argv[5]))
sys.stdout.write(dump(model, opt))
)py";

std::string TempPath(const std::string& name) {
  const char* dir = std::getenv("TEST_TMPDIR");
  return std::string(dir != nullptr ? dir : "/tmp") + "/" + name;
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string RunPython(const std::vector<std::string>& args) {
  const std::string script = TempPath("optimizer_state_test.py");
  std::ofstream(script) << kScript;
  std::string command = g_python + " " + script;
  for (const std::string& a : args) command += " " + ShellQuote(a);
  FILE* pipe = popen(command.c_str(), "r");
  EXPECT_NE(pipe, nullptr);
  if (pipe == nullptr) return "";
  std::string out;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) out.append(buffer, n);
  EXPECT_EQ(pclose(pipe), 0) << "python failed: " << command;
  return out;
}

// ---------------------------------------------------------------------------
// The C++ side.

double InitValue(int64_t k, int64_t i) { return ((i * 7 + k * 3) % 11 - 5) / 8.0; }
double GradValue(int64_t k, int64_t i, int64_t s) { return ((i * 5 + k * 2 + s * 3) % 13 - 6) / 16.0; }

at::Tensor Pattern(at::IntArrayRef shape, const std::function<double(int64_t)>& f) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::vector<float> values(n);
  for (int64_t i = 0; i < n; ++i) values[i] = static_cast<float>(f(i));
  return at::tensor(values).reshape(shape);
}

torch::nn::Sequential MakeModel(bool zeros = false) {
  torch::nn::Sequential model(torch::nn::Linear(3, 4), torch::nn::Linear(4, 2));
  c10::NoGradGuard no_grad;
  int64_t k = 0;
  for (at::Tensor& p : model->parameters()) {
    p.copy_(zeros ? at::zeros_like(p) : Pattern(p.sizes(), [k](int64_t i) { return InitValue(k, i); }));
    ++k;
  }
  return model;
}

void Steps(torch::nn::Sequential& model, Optimizer& opt, int first, int count) {
  for (int s = first; s < first + count; ++s) {
    int64_t k = 0;
    for (at::Tensor& p : model->parameters()) {
      p.mutable_grad() = Pattern(p.sizes(), [k, s](int64_t i) { return GradValue(k, i, s); });
      ++k;
    }
    opt.step();
  }
}

struct Config {
  std::string name;
  std::string python;  // the script's config literal
  bool two_groups;
  // Builds the optimizer; lr_scale != 1 makes a differently configured one.
  std::function<std::unique_ptr<Optimizer>(std::vector<OptimizerParamGroup>, double lr_scale)> make;
};

std::vector<OptimizerParamGroup> Groups(torch::nn::Sequential& model, bool two,
                                        std::unique_ptr<torch::optim::OptimizerOptions> group1) {
  std::vector<OptimizerParamGroup> groups;
  if (!two) {
    groups.emplace_back(model->parameters());
    return groups;
  }
  groups.emplace_back(model->ptr(0)->parameters());
  groups.emplace_back(model->ptr(1)->parameters(), std::move(group1));
  return groups;
}

std::vector<Config> Configs() {
  return {
      {"SgdMomentum", "{'cls': 'SGD', 'kw': {'lr': 0.1, 'momentum': 0.9}}", false,
       [](std::vector<OptimizerParamGroup> g, double s) -> std::unique_ptr<Optimizer> {
         return std::make_unique<SGD>(g, SGDOptions(0.1 * s).momentum(0.9));
       }},
      {"SgdNesterovWeightDecay",
       "{'cls': 'SGD', 'kw': {'lr': 0.1, 'momentum': 0.9, 'nesterov': True, "
       "'weight_decay': 0.01}}",
       false,
       [](std::vector<OptimizerParamGroup> g, double s) -> std::unique_ptr<Optimizer> {
         return std::make_unique<SGD>(
             g, SGDOptions(0.1 * s).momentum(0.9).nesterov(true).weight_decay(0.01));
       }},
      {"Adam", "{'cls': 'Adam', 'kw': {'lr': 0.01}}", false,
       [](std::vector<OptimizerParamGroup> g, double s) -> std::unique_ptr<Optimizer> {
         return std::make_unique<Adam>(g, AdamOptions(0.01 * s));
       }},
      {"AdamAmsgradWeightDecayTwoGroups",
       "{'cls': 'Adam', 'kw': {'lr': 0.01, 'betas': (0.8, 0.99), 'weight_decay': 0.1, "
       "'amsgrad': True}, 'group1': {'lr': 0.05}}",
       true,
       [](std::vector<OptimizerParamGroup> g, double s) -> std::unique_ptr<Optimizer> {
         auto d = AdamOptions(0.01 * s).betas({0.8, 0.99}).weight_decay(0.1).amsgrad(true);
         auto g1 = d;
         g1.lr(0.05 * s);
         g[1].set_options(std::make_unique<AdamOptions>(g1));
         return std::make_unique<Adam>(g, d);
       }},
      {"AdamWTwoGroups", "{'cls': 'AdamW', 'kw': {'lr': 0.01}, 'group1': {'lr': 0.03}}", true,
       [](std::vector<OptimizerParamGroup> g, double s) -> std::unique_ptr<Optimizer> {
         auto d = AdamWOptions(0.01 * s);
         auto g1 = d;
         g1.lr(0.03 * s);
         g[1].set_options(std::make_unique<AdamWOptions>(g1));
         return std::make_unique<AdamW>(g, d);
       }},
  };
}

// Names the parameter in gtest's messages.
void PrintTo(const Config& c, std::ostream* os) { *os << c.name; }

struct Trainer {
  torch::nn::Sequential model;
  std::unique_ptr<Optimizer> opt;
};

Trainer MakeTrainer(const Config& c, double lr_scale = 1.0, bool zeros = false) {
  Trainer t{MakeModel(zeros), nullptr};
  t.opt = c.make(Groups(t.model, c.two_groups, nullptr), lr_scale);
  return t;
}

// The line format, from our Values.
std::string FormatDouble(double x) { return absl::StrFormat("%.17g", x); }

void Leaf(const Value& v, std::vector<std::string>* out) {
  switch (v.kind()) {
    case Value::Kind::kNone: out->push_back("none"); return;
    case Value::Kind::kBool: out->insert(out->end(), {"bool", v.as_bool() ? "1" : "0"}); return;
    case Value::Kind::kInt: out->insert(out->end(), {"int", std::to_string(v.as_int())}); return;
    case Value::Kind::kFloat: out->insert(out->end(), {"float", FormatDouble(v.as_float())}); return;
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      out->push_back(v.is_list() ? "list" : "tuple");
      out->push_back(std::to_string(v.items().size()));
      for (const Value& item : v.items()) Leaf(item, out);
      return;
    case Value::Kind::kTensor: {
      const at::Tensor& t = v.as_tensor();
      out->insert(out->end(), {"tensor", *DtypeName(t.scalar_type()), std::to_string(t.dim())});
      for (int64_t s : t.sizes()) out->push_back(std::to_string(s));
      at::Tensor flat = t.detach().reshape({-1}).contiguous();
      for (int64_t i = 0; i < flat.numel(); ++i) {
        out->push_back(t.is_floating_point() ? FormatDouble(flat[i].item<double>())
                                             : std::to_string(flat[i].item<int64_t>()));
      }
      return;
    }
    default: ADD_FAILURE() << "unexpected kind " << v.kind_name(); return;
  }
}

std::string Line(const std::string& section, const std::string& k1, const std::string& k2,
                 const Value& v) {
  std::vector<std::string> tokens;
  Leaf(v, &tokens);
  return absl::StrCat(section, "\t", k1, "\t", k2, "\t", absl::StrJoin(tokens, " "), "\n");
}

std::string Dump(const Dict& model_state, const Dict& opt_state) {
  std::string out;
  for (const auto& [k, v] : model_state) out += Line("P", k.as_string(), "-", v);
  for (const auto& [i, entry] : opt_state.Find("state")->as_dict()) {
    for (const auto& [k, v] : entry.as_dict()) out += Line("S", std::to_string(i.as_int()), k.as_string(), v);
  }
  const auto& groups = opt_state.Find("param_groups")->items();
  for (size_t g = 0; g < groups.size(); ++g) {
    for (const auto& [k, v] : groups[g].as_dict()) out += Line("G", std::to_string(g), k.as_string(), v);
  }
  return out;
}

std::string Dump(Trainer& t) {
  absl::StatusOr<Dict> opt_state = OptimizerStateDict(*t.opt);
  EXPECT_TRUE(opt_state.ok()) << opt_state.status();
  return opt_state.ok() ? Dump(ModuleStateDict(*t.model), *opt_state) : "";
}

// The line format, read into Values.
Value ParseLeaf(const std::vector<std::string>& t, size_t& i) {
  const std::string kind = t.at(i);
  if (kind == "none") return ++i, Value();
  if (kind == "bool") return i += 2, Value(t.at(i - 1) == "1");
  if (kind == "int") return i += 2, Value(static_cast<int64_t>(std::stoll(t.at(i - 1))));
  if (kind == "float") return i += 2, Value(std::stod(t.at(i - 1)));
  if (kind == "list" || kind == "tuple") {
    const size_t n = std::stoul(t.at(i + 1));
    i += 2;
    std::vector<Value> items;
    for (size_t j = 0; j < n; ++j) items.push_back(ParseLeaf(t, i));
    return kind == "list" ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
  }
  EXPECT_EQ(kind, "tensor");
  const at::ScalarType dtype = *DtypeFromName(t.at(i + 1));
  const int64_t nd = std::stoll(t.at(i + 2));
  std::vector<int64_t> shape;
  int64_t n = 1;
  for (int64_t d = 0; d < nd; ++d) shape.push_back(std::stoll(t.at(i + 3 + d))), n *= shape.back();
  i += 3 + nd;
  std::vector<double> values;
  for (int64_t j = 0; j < n; ++j) values.push_back(std::stod(t.at(i + j)));
  i += n;
  return Value(at::tensor(values, at::kDouble).to(dtype).reshape(shape));
}

void Parse(const std::string& text, Dict* model_state, Dict* opt_state) {
  Dict state;
  std::vector<Value> groups;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, '\t');
    ASSERT_EQ(f.size(), 4u) << line;
    std::vector<std::string> tokens = absl::StrSplit(f[3], ' ');
    size_t i = 0;
    Value v = ParseLeaf(tokens, i);
    if (f[0] == "P") {
      model_state->Set(f[1], v);
    } else if (f[0] == "S") {
      Value key(static_cast<int64_t>(std::stoll(f[1])));
      if (state.Find(key) == nullptr) state.Set(key, Value::MakeDict());
      state.Find(key)->as_dict().Set(f[2], v);
    } else {
      const size_t g = std::stoul(f[1]);
      while (groups.size() <= g) groups.push_back(Value::MakeDict());
      groups[g].as_dict().Set(f[2], v);
    }
  }
  opt_state->Set("state", Value(std::move(state)));
  opt_state->Set("param_groups", Value::List(std::move(groups)));
}

// Compares two dumps line by line: structure, types, ints and bools exactly,
// floats within `rtol`. Returns the largest relative float difference.
double ExpectDumpsMatch(const std::string& ours, const std::string& python, double rtol) {
  std::vector<std::string> a = absl::StrSplit(ours, '\n', absl::SkipEmpty());
  std::vector<std::string> b = absl::StrSplit(python, '\n', absl::SkipEmpty());
  EXPECT_EQ(a.size(), b.size()) << "ours:\n" << ours << "python:\n" << python;
  double worst = 0;
  for (size_t l = 0; l < std::min(a.size(), b.size()); ++l) {
    std::vector<std::string> ta = absl::StrSplit(a[l], absl::ByAnyChar("\t "));
    std::vector<std::string> tb = absl::StrSplit(b[l], absl::ByAnyChar("\t "));
    if (ta.size() != tb.size() || ta[0] != tb[0] || ta[1] != tb[1] || ta[2] != tb[2] ||
        ta[3] != tb[3]) {
      ADD_FAILURE() << "line " << l << " differs:\n  ours:   " << a[l] << "\n  python: " << b[l];
      continue;
    }
    for (size_t i = 4; i < ta.size(); ++i) {
      if (ta[i] == tb[i]) continue;
      double x, y;
      if (!absl::SimpleAtod(ta[i], &x) || !absl::SimpleAtod(tb[i], &y)) {
        ADD_FAILURE() << "line " << l << " token " << i << ": " << ta[i] << " vs " << tb[i]
                      << "\n  ours:   " << a[l] << "\n  python: " << b[l];
        continue;
      }
      if (x == y) continue;
      const double rel = std::abs(x - y) / std::max(std::abs(y), 1e-6);
      worst = std::max(worst, rel);
      EXPECT_LE(rel, rtol) << "line " << l << " token " << i << ": " << ta[i] << " vs " << tb[i]
                           << "\n  ours:   " << a[l] << "\n  python: " << b[l];
    }
  }
  return worst;
}

// LibTorch's Adam rounds its first-moment update differently from Python's
// lerp_ (see optimizer_state.h); everything else matches exactly.
constexpr double kRtol = 1e-5;

// A deep copy of every tensor, as writing and reading a file would make.
Value DeepCopy(const Value& v) {
  if (v.is_tensor()) return Value(v.as_tensor().clone());
  if (v.is_sequence()) {
    std::vector<Value> items;
    for (const Value& item : v.items()) items.push_back(DeepCopy(item));
    return v.is_list() ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
  }
  if (v.is_dict()) {
    Dict d;
    for (const auto& [k, item] : v.as_dict()) d.Set(k, DeepCopy(item));
    return Value(std::move(d));
  }
  return v;
}
Dict DeepCopy(const Dict& d) { return DeepCopy(Value(d)).as_dict(); }

// An in-memory "file" of storages; its TensorSource memcpys, which is right
// only when the loader keeps TensorSource's contract.
struct MemoryFile {
  std::map<std::string, at::Tensor> storages;
  int reads = 0;

  Value ToRefs(const Value& v) {
    if (v.is_tensor()) {
      at::Tensor c = v.as_tensor().contiguous().clone();
      TensorRef ref;
      ref.storage_key = std::to_string(storages.size());
      ref.dtype = c.scalar_type();
      ref.storage_numel = c.numel();
      ref.sizes = c.sizes().vec();
      ref.strides = c.strides().vec();
      storages[ref.storage_key] = c;
      return Value(ref);
    }
    if (v.is_sequence()) {
      std::vector<Value> items;
      for (const Value& item : v.items()) items.push_back(ToRefs(item));
      return v.is_list() ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
    }
    if (v.is_dict()) {
      Dict d;
      for (const auto& [k, item] : v.as_dict()) d.Set(k, ToRefs(item));
      return Value(std::move(d));
    }
    return v;
  }

  TensorSource Source() {
    return [this](const TensorRef& ref, at::Tensor& dst) -> absl::Status {
      auto it = storages.find(ref.storage_key);
      if (it == storages.end()) return absl::NotFoundError("no storage " + ref.storage_key);
      if (!dst.is_contiguous() || dst.scalar_type() != ref.dtype || dst.sizes().vec() != ref.sizes) {
        return absl::InternalError("TensorSource contract broken");
      }
      std::memcpy(dst.data_ptr(), it->second.data_ptr(), it->second.nbytes());
      ++reads;
      return absl::OkStatus();
    };
  }
};

class WithPython : public ::testing::TestWithParam<Config> {};

std::string ConfigName(const ::testing::TestParamInfo<Config>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Optimizers, WithPython, ::testing::ValuesIn(Configs()), ConfigName);

// Same model, hyperparameters and gradients: our state_dict has Python's
// keys, key order, value types and (up to rounding) values.
TEST_P(WithPython, StateDictMatchesPython) {
  const Config& c = GetParam();
  Trainer t = MakeTrainer(c);
  Steps(t.model, *t.opt, 0, 2);
  const std::string ours = Dump(t);
  const std::string python = RunPython({"run", c.python, "2"});
  const double worst = ExpectDumpsMatch(ours, python, kRtol);
  std::printf("%s: largest relative difference from Python after 2 steps: %g\n", c.name.c_str(),
              worst);
  if (c.name.rfind("Sgd", 0) == 0) {
    EXPECT_EQ(worst, 0.0) << "SGD should match Python bit for bit";
  }
}

// Python's load_state_dict accepts what we save, and continues as we do.
TEST_P(WithPython, PythonResumesFromOurState) {
  const Config& c = GetParam();
  Trainer t = MakeTrainer(c);
  Steps(t.model, *t.opt, 0, 2);
  const std::string file = TempPath(c.name + "_ours.txt");
  std::ofstream(file) << Dump(t);
  const std::string python = RunPython({"resume", c.python, file, "2", "2"});
  Steps(t.model, *t.opt, 2, 2);
  ExpectDumpsMatch(Dump(t), python, kRtol);
}

// We accept what Python saved (read through a TensorSource), and continue as
// Python does.
TEST_P(WithPython, WeResumeFromPythonState) {
  const Config& c = GetParam();
  Dict model_state, opt_state;
  Parse(RunPython({"run", c.python, "2"}), &model_state, &opt_state);
  MemoryFile file;
  Dict model_refs = file.ToRefs(Value(model_state)).as_dict();
  Dict opt_refs = file.ToRefs(Value(opt_state)).as_dict();

  Trainer t = MakeTrainer(c, /*lr_scale=*/3.0, /*zeros=*/true);
  absl::StatusOr<StateLoadReport> report =
      LoadModuleState(*t.model, model_refs, /*strict=*/true, file.Source(), "python.txt");
  ASSERT_TRUE(report.ok()) << report.status();
  absl::Status status = LoadOptimizerState(*t.opt, opt_refs, file.Source());
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(file.reads, static_cast<int>(file.storages.size()));
  // Loaded exactly: saving again gives Python's dump back.
  ExpectDumpsMatch(Dump(t), Dump(model_state, opt_state), 0.0);

  Steps(t.model, *t.opt, 2, 2);
  ExpectDumpsMatch(Dump(t), RunPython({"run", c.python, "4"}), kRtol);
}

class RoundTrip : public ::testing::TestWithParam<Config> {};
INSTANTIATE_TEST_SUITE_P(Optimizers, RoundTrip, ::testing::ValuesIn(Configs()), ConfigName);

// C++ -> Value -> C++: training continued after a restore is bit-identical to
// uninterrupted training, hyperparameters included.
TEST_P(RoundTrip, ContinuedTrainingIsBitExact) {
  const Config& c = GetParam();
  Trainer a = MakeTrainer(c);
  Steps(a.model, *a.opt, 0, 3);
  Dict model_saved = DeepCopy(ModuleStateDict(*a.model));
  absl::StatusOr<Dict> opt_saved = OptimizerStateDict(*a.opt);
  ASSERT_TRUE(opt_saved.ok()) << opt_saved.status();
  Dict opt_copy = DeepCopy(*opt_saved);
  Steps(a.model, *a.opt, 3, 3);

  Trainer b = MakeTrainer(c, /*lr_scale=*/0.5, /*zeros=*/true);
  Steps(b.model, *b.opt, 0, 1);  // stale state that the load must replace
  ASSERT_TRUE(LoadModuleState(*b.model, model_saved, true).ok());
  absl::Status status = LoadOptimizerState(*b.opt, opt_copy);
  ASSERT_TRUE(status.ok()) << status;
  // The loaded state does not alias the Value's tensors.
  for (const auto& [i, entry] : opt_copy.Find("state")->as_dict()) {
    for (const auto& [k, v] : entry.as_dict()) v.as_tensor().fill_(1e6);
  }
  Steps(b.model, *b.opt, 3, 3);
  EXPECT_EQ(Dump(a), Dump(b));
  absl::StatusOr<Dict> sa = OptimizerStateDict(*a.opt), sb = OptimizerStateDict(*b.opt);
  ASSERT_TRUE(sa.ok() && sb.ok());
  EXPECT_TRUE(Value(*sa) == Value(*sb));
}

// ---------------------------------------------------------------------------
// Layout details and errors.

Trainer AdamTrainer(bool amsgrad = false, double weight_decay = 0) {
  Trainer t{MakeModel(), nullptr};
  t.opt = std::make_unique<Adam>(t.model->parameters(),
                                 AdamOptions(0.01).amsgrad(amsgrad).weight_decay(weight_decay));
  Steps(t.model, *t.opt, 0, 2);
  return t;
}

AdamParamState& AdamStateOf(Optimizer& opt, const at::Tensor& p) {
  auto it = opt.state().find(p.unsafeGetTensorImpl());
  EXPECT_NE(it, opt.state().end());
  return static_cast<AdamParamState&>(*it->second);
}

Dict& StateEntry(Dict& opt_state, int64_t index) {
  return opt_state.Find("state")->as_dict().Find(Value(index))->as_dict();
}
Dict& Group(Dict& opt_state, size_t g) {
  return opt_state.Find("param_groups")->items()[g].as_dict();
}

TEST(OptimizerStateDict, LayoutOfAdam) {
  Trainer t = AdamTrainer();
  absl::StatusOr<Dict> sd = OptimizerStateDict(*t.opt);
  ASSERT_TRUE(sd.ok()) << sd.status();
  ASSERT_EQ(sd->size(), 2u);
  EXPECT_EQ(sd->items()[0].first.as_string(), "state");
  EXPECT_EQ(sd->items()[1].first.as_string(), "param_groups");
  Dict& entry = StateEntry(*sd, 3);
  const at::Tensor& step = entry.Find("step")->as_tensor();
  EXPECT_EQ(step.dim(), 0);
  EXPECT_EQ(step.scalar_type(), at::kFloat);
  EXPECT_EQ(step.item<float>(), 2.0f);
  // The state tensors are the optimizer's own (no copy).
  AdamParamState& live = AdamStateOf(*t.opt, t.model->parameters()[3]);
  EXPECT_EQ(entry.Find("exp_avg")->as_tensor().data_ptr(), live.exp_avg().data_ptr());
  EXPECT_FALSE(entry.Contains("max_exp_avg_sq"));
  const Value& params = *Group(*sd, 0).Find("params");
  ASSERT_TRUE(params.is_list());
  EXPECT_EQ(params, Value::List({Value(0), Value(1), Value(2), Value(3)}));
  EXPECT_TRUE(Group(*sd, 0).Find("weight_decay")->is_int());  // Python's default is the int 0
  EXPECT_TRUE(Group(*sd, 0).Find("betas")->is_tuple());
}

TEST(OptimizerState, UnsupportedTypeIsNamed) {
  torch::nn::Sequential model = MakeModel();
  torch::optim::RMSprop rms(model->parameters());
  absl::StatusOr<Dict> sd = OptimizerStateDict(rms);
  ASSERT_FALSE(sd.ok());
  EXPECT_NE(sd.status().message().find("torch::optim::RMSprop"), std::string::npos) << sd.status();
  absl::Status status = LoadOptimizerState(rms, Dict());
  EXPECT_NE(status.message().find("torch::optim::RMSprop"), std::string::npos) << status;
}

// Every rejected load leaves the optimizer as it was.
void ExpectRejected(Trainer& t, const Dict& state, const std::string& expected) {
  const std::string before = Dump(t);
  absl::Status status = LoadOptimizerState(*t.opt, state);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find(expected), std::string::npos)
      << "expected \"" << expected << "\" in: " << status;
  EXPECT_EQ(Dump(t), before);
}

TEST(LoadOptimizerState, RejectsBadStateNamingTheKey) {
  Trainer t = AdamTrainer(/*amsgrad=*/true);
  auto fresh = [&] { return DeepCopy(*OptimizerStateDict(*t.opt)); };
  {
    Dict sd = fresh();
    StateEntry(sd, 0).Set("exp_avg", Value(at::zeros({12})));
    ExpectRejected(t, sd, "optimizer.state.0.exp_avg: shape [12] vs parameter shape [4,3]");
  }
  {
    Dict sd = fresh();
    StateEntry(sd, 2).Erase(Value("max_exp_avg_sq"));
    ExpectRejected(t, sd, "optimizer.state.2.max_exp_avg_sq: missing, and the group has amsgrad=True");
  }
  {
    Dict sd = fresh();
    StateEntry(sd, 1).Set("step", Value(2.5));
    ExpectRejected(t, sd, "optimizer.state.1.step: expected a non-negative whole step count");
  }
  {
    Dict sd = fresh();
    StateEntry(sd, 1).Set("exp_avg_sq", Value("oops"));
    ExpectRejected(t, sd, "optimizer.state.1.exp_avg_sq: expected a tensor, got str");
  }
  {
    Dict sd = fresh();
    StateEntry(sd, 1).Set("momentum_buffer", Value(at::zeros({4})));
    ExpectRejected(t, sd, "optimizer.state.1.momentum_buffer: unknown state for torch::optim::Adam");
  }
  {
    Dict sd = fresh();
    sd.Find("state")->as_dict().Set(Value(9), Value::MakeDict());
    ExpectRejected(t, sd, "optimizer.state.9: no parameter with this index");
  }
  {
    Dict sd = fresh();
    Group(sd, 0).Find("params")->items().pop_back();
    ExpectRejected(t, sd, "optimizer.param_groups.0.params: 3 parameter(s) in file vs 4");
  }
  {
    Dict sd = fresh();
    sd.Find("param_groups")->items().push_back(Group(sd, 0));
    ExpectRejected(t, sd, "optimizer.param_groups: 2 group(s) in file vs 1");
  }
  {
    Dict sd = fresh();
    Group(sd, 0).Set("maximize", Value(true));
    ExpectRejected(t, sd, "optimizer.param_groups.0.maximize: True is not supported");
  }
  {
    Dict sd = fresh();
    Group(sd, 0).Set("lr", Value("fast"));
    ExpectRejected(t, sd, "optimizer.param_groups.0.lr: expected a number, got str");
  }
  {
    Dict sd = fresh();
    Group(sd, 0).Set("betas", Value::Tuple({Value(0.9)}));
    ExpectRejected(t, sd, "optimizer.param_groups.0.betas: expected a pair of numbers");
  }
  {
    Dict sd = fresh();
    sd.Erase(Value("param_groups"));
    ExpectRejected(t, sd, "optimizer.param_groups: missing");
  }
}

TEST(LoadOptimizerState, DecoupledWeightDecayMustMatchTheClass) {
  {
    Trainer t = AdamTrainer(false, /*weight_decay=*/0.1);
    Dict sd = DeepCopy(*OptimizerStateDict(*t.opt));
    Group(sd, 0).Set("decoupled_weight_decay", Value(true));  // Python AdamW's state
    ExpectRejected(t, sd, "decoupled_weight_decay: True with weight_decay 0.1 cannot be loaded into "
                          "torch::optim::Adam; use torch::optim::AdamW");
  }
  {
    Trainer t = AdamTrainer();  // no weight decay: the flag changes nothing
    Dict sd = DeepCopy(*OptimizerStateDict(*t.opt));
    Group(sd, 0).Set("decoupled_weight_decay", Value(true));
    EXPECT_TRUE(LoadOptimizerState(*t.opt, sd).ok());
  }
}

// Older torch versions: 'step' as int or float, no maximize/foreach/
// capturable/differentiable/fused/decoupled_weight_decay keys, SGD's
// 'momentum_buffer': None. All load, to the same effect.
TEST(LoadOptimizerState, AcceptsOlderPythonLayouts) {
  Trainer reference = AdamTrainer(/*amsgrad=*/true);
  Dict sd = DeepCopy(*OptimizerStateDict(*reference.opt));
  StateEntry(sd, 0).Set("step", Value(int64_t{2}));
  StateEntry(sd, 1).Set("step", Value(2.0));
  StateEntry(sd, 2).Set("step", Value(at::tensor({2.0}, at::kDouble)));
  for (const char* key : {"maximize", "foreach", "capturable", "differentiable", "fused",
                          "decoupled_weight_decay"}) {
    ASSERT_TRUE(Group(sd, 0).Erase(Value(key)));
  }
  Group(sd, 0).Set("initial_lr", Value(0.01));  // a scheduler's key: ignored
  Trainer t{MakeModel(), nullptr};
  t.opt = std::make_unique<Adam>(t.model->parameters(), AdamOptions(0.5));
  ASSERT_TRUE(LoadModuleState(*t.model, DeepCopy(ModuleStateDict(*reference.model)), true).ok());
  absl::Status status = LoadOptimizerState(*t.opt, sd);
  ASSERT_TRUE(status.ok()) << status;
  for (const at::Tensor& p : t.model->parameters()) {
    EXPECT_EQ(AdamStateOf(*t.opt, p).step(), 2);
  }
  Steps(reference.model, *reference.opt, 2, 2);
  Steps(t.model, *t.opt, 2, 2);
  EXPECT_EQ(Dump(t), Dump(reference));

  // SGD without momentum, as torch < 2.1 saved it.
  torch::nn::Sequential model = MakeModel();
  SGD sgd(model->parameters(), SGDOptions(0.1));
  Dict old_sgd;
  Dict state;
  state.Set(Value(0), Value(Dict{{Value("momentum_buffer"), Value()}}));
  old_sgd.Set("state", Value(std::move(state)));
  old_sgd.Set("param_groups",
              Value::List({Value(Dict{{Value("lr"), Value(0.25)},
                                      {Value("momentum"), Value(0)},
                                      {Value("dampening"), Value(0)},
                                      {Value("weight_decay"), Value(0)},
                                      {Value("nesterov"), Value(false)},
                                      {Value("params"), Value::List({Value(0), Value(1), Value(2),
                                                                     Value(3)})}})}));
  status = LoadOptimizerState(sgd, old_sgd);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_TRUE(sgd.state().empty());
  EXPECT_EQ(static_cast<SGDOptions&>(sgd.param_groups()[0].options()).lr(), 0.25);
}

TEST(LoadOptimizerState, ConvertsStateToTheParameterDtype) {
  Trainer reference = AdamTrainer();
  Dict sd = DeepCopy(*OptimizerStateDict(*reference.opt));
  for (auto& [i, entry] : sd.Find("state")->as_dict().mutable_items()) {
    Value& v = *entry.as_dict().Find("exp_avg");
    v = Value(v.as_tensor().to(at::kDouble));
  }
  Trainer t{MakeModel(), nullptr};
  t.opt = std::make_unique<Adam>(t.model->parameters(), AdamOptions(0.01));
  ASSERT_TRUE(LoadOptimizerState(*t.opt, sd).ok());
  for (const at::Tensor& p : t.model->parameters()) {
    EXPECT_EQ(AdamStateOf(*t.opt, p).exp_avg().scalar_type(), at::kFloat);
  }
}

// A stand-in for a file holding `reference`'s optimizer state: each state
// tensor of `sd` is a ref into `storages`, read by `source` (one at a time)
// or `batch` (several). Reading the storage `fail_key` fails either way, as a
// record with a bad CRC does.
struct FileStandIn {
  explicit FileStandIn(torch::optim::Optimizer& reference)
      : sd(DeepCopy(*OptimizerStateDict(reference))) {
    for (auto& [i, entry] : sd.Find("state")->as_dict().mutable_items()) {
      for (auto& [k, v] : entry.as_dict().mutable_items()) {
        const at::Tensor t = v.as_tensor();
        TensorRef ref;
        ref.storage_key = absl::StrCat(storages.size());
        ref.dtype = t.scalar_type();
        ref.storage_numel = t.numel();
        ref.sizes = t.sizes().vec();
        ref.strides = t.strides().vec();
        storages[ref.storage_key] = t;
        v = Value(ref);
      }
    }
    source = [this](const TensorRef& ref, at::Tensor& dst) {
      ++single_reads;
      if (ref.storage_key == fail_key) return absl::DataLossError("CRC-32 mismatch (stand-in)");
      dst.copy_(storages.at(ref.storage_key));
      return absl::OkStatus();
    };
    batch = [this](std::vector<TensorRead>& reads) {
      ++batches;
      for (TensorRead& r : reads) {
        if (r.ref.storage_key == fail_key) {
          return absl::DataLossError("CRC-32 mismatch (stand-in)");
        }
        r.destination.copy_(storages.at(r.ref.storage_key));
        ++batched;
      }
      return absl::OkStatus();
    };
  }

  Dict sd;
  std::map<std::string, at::Tensor> storages;
  int single_reads = 0, batches = 0;
  std::string fail_key;
  size_t batched = 0;
  TensorSource source;
  TensorBatchSource batch;
};

// Reloading a file into a live optimizer reads into its existing buffers (no
// second copy of the state), after every check, in one batch.
TEST(LoadOptimizerState, FileTensorsGoIntoTheLiveBuffersInOneBatch) {
  Trainer reference = AdamTrainer();
  FileStandIn file(*reference.opt);
  Dict& sd = file.sd;

  Trainer t = AdamTrainer();  // live state of its own, to be replaced
  const std::vector<at::Tensor> params = t.model->parameters();
  const std::vector<at::Tensor> reference_params = reference.model->parameters();
  std::vector<void*> before;
  for (const at::Tensor& p : params) {
    before.push_back(AdamStateOf(*t.opt, p).exp_avg().data_ptr());
  }
  ASSERT_TRUE(LoadOptimizerState(*t.opt, sd, file.source, "optimizer", file.batch).ok());
  EXPECT_EQ(file.batches, 1);
  EXPECT_EQ(file.single_reads, static_cast<int>(params.size()));  // the 'step's
  EXPECT_EQ(file.batched, 2 * params.size());                      // exp_avg, exp_avg_sq
  for (size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(AdamStateOf(*t.opt, params[i]).exp_avg().data_ptr(), before[i]) << "parameter " << i;
    EXPECT_TRUE(AdamStateOf(*t.opt, params[i]).exp_avg().equal(
        AdamStateOf(*reference.opt, reference_params[i]).exp_avg()));
  }

  // A bad entry anywhere leaves the live state untouched: nothing is read
  // before every check has passed.
  const at::Tensor live = AdamStateOf(*t.opt, params[0]).exp_avg().clone();
  StateEntry(sd, 1).Set("exp_avg", Value(at::zeros({7})));
  file.storages.at("1").fill_(42);  // parameter 0's exp_avg, were it read
  file.batches = 0;
  EXPECT_FALSE(LoadOptimizerState(*t.opt, sd, file.source, "optimizer", file.batch).ok());
  EXPECT_EQ(file.batches, 0);
  EXPECT_TRUE(AdamStateOf(*t.opt, params[0]).exp_avg().equal(live));
}

// A read that fails after others landed (a CRC mismatch in the last record):
// into the live buffers, they are partly overwritten; without them (what
// Fabric's all-or-nothing loads ask) the optimizer keeps its own buffers,
// untouched, and a load that succeeds installs new ones.
TEST(LoadOptimizerState, WithoutTheLiveBuffersAFailedReadChangesNothing) {
  Trainer reference = AdamTrainer();
  const std::vector<at::Tensor> reference_params = reference.model->parameters();
  for (const bool into_live : {true, false}) {
    SCOPED_TRACE(into_live ? "into the live buffers" : "into new tensors");
    Trainer t = AdamTrainer();
    // Another step, so that its state differs from the reference's.
    Steps(t.model, *t.opt, 2, 3);
    const std::vector<at::Tensor> params = t.model->parameters();
    std::vector<at::Tensor> before;
    std::vector<void*> buffers;
    for (const at::Tensor& p : params) {
      before.push_back(AdamStateOf(*t.opt, p).exp_avg().clone());
      buffers.push_back(AdamStateOf(*t.opt, p).exp_avg().data_ptr());
    }
    FileStandIn file(*reference.opt);
    // Every other state tensor lands first: the last one fails.
    file.fail_key = absl::StrCat(file.storages.size() - 1);
    EXPECT_EQ(LoadOptimizerState(*t.opt, file.sd, file.source, "optimizer", file.batch, into_live)
                  .code(),
              absl::StatusCode::kDataLoss);
    bool changed = false;
    for (size_t i = 0; i < params.size(); ++i) {
      EXPECT_EQ(AdamStateOf(*t.opt, params[i]).exp_avg().data_ptr(), buffers[i]);
      changed |= !AdamStateOf(*t.opt, params[i]).exp_avg().equal(before[i]);
    }
    EXPECT_EQ(changed, into_live) << "into the live buffers the landed read shows; else none";

    file.fail_key.clear();
    ASSERT_TRUE(
        LoadOptimizerState(*t.opt, file.sd, file.source, "optimizer", file.batch, into_live).ok());
    for (size_t i = 0; i < params.size(); ++i) {
      const at::Tensor& now = AdamStateOf(*t.opt, params[i]).exp_avg();
      EXPECT_EQ(now.data_ptr() == buffers[i], into_live) << "parameter " << i;
      EXPECT_TRUE(now.equal(AdamStateOf(*reference.opt, reference_params[i]).exp_avg()));
    }
  }
}

}  // namespace
}  // namespace fabric

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PYTHON\n", argv[0]);
    return 2;
  }
  fabric::g_python = argv[1];
  return RUN_ALL_TESTS();
}
