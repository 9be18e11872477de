//! The user's own metadata rule: a SQL boolean expression over the metadata's columns, such as
//! `LICENSE IS NOT NULL AND NSFW = 'UNLIKELY'` or `LANGUAGE IN ('en', 'de') AND WIDTH * HEIGHT
//! >= 65536`, set as `metadata_filter.where` and counted in the funnel like the built-in rules.
//!
//! The expression is parsed once (sqlparser, generic dialect) into a small tree of what the
//! rule supports, and evaluated over each record batch with arrow's kernels:
//! - column names, exactly as the parquet file spells them (`"quoted"` when they need it);
//! - numbers, `'text'`, `TRUE`, `FALSE`, `NULL`;
//! - `AND`, `OR`, `NOT`; `=`, `<>`, `!=`, `<`, `<=`, `>`, `>=`; `+`, `-`, `*`, `/`, `%`;
//! - `IS [NOT] NULL`, `[NOT] IN (...)`, `[NOT] BETWEEN ... AND ...`, `[NOT] LIKE` / `ILIKE`
//!   with a text pattern;
//! - `lower(x)`, `upper(x)`, `length(x)` (characters), `abs(x)`.
//!
//! Numbers compare as f64 and text as text; comparing one with the other is an error, as in
//! PostgreSQL. SQL's three-valued logic holds: a row passes only where the expression is true,
//! so NULL (and NaN, read as NULL, as the built-in rules fail a NaN score) fails it.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Datum, Float64Array, RecordBatch, Scalar, StringArray,
    UInt32Array, new_null_array,
};
use arrow_schema::DataType;
use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectNamePart,
    UnaryOperator, Value,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

/// Why a `where` rule cannot be parsed or evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("metadata_filter.where {rule:?}: {problem}")]
pub struct SqlRuleError {
    pub rule: String,
    pub problem: String,
}

/// A parsed `where` rule.
#[derive(Debug, Clone)]
pub struct SqlRule {
    text: String,
    root: Node,
    columns: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Compare {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Lower,
    Upper,
    Length,
    Abs,
}

#[derive(Debug, Clone)]
enum Node {
    Column(String),
    Number(f64),
    Text(String),
    Bool(bool),
    Null,
    Not(Box<Node>),
    Neg(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Compare(Box<Node>, Compare, Box<Node>),
    Arith(Box<Node>, Arith, Box<Node>),
    IsNull {
        expr: Box<Node>,
        negated: bool,
    },
    Like {
        expr: Box<Node>,
        pattern: String,
        negated: bool,
        case_insensitive: bool,
    },
    Call(Func, Box<Node>),
}

impl SqlRule {
    /// Parses `text`; anything outside the supported subset is an error naming it.
    pub fn parse(text: &str) -> Result<Self, SqlRuleError> {
        let error = |problem: String| SqlRuleError {
            rule: text.to_owned(),
            problem,
        };
        let dialect = GenericDialect {};
        let mut parser = Parser::new(&dialect)
            .try_with_sql(text)
            .map_err(|e| error(e.to_string()))?;
        let expr = parser.parse_expr().map_err(|e| error(e.to_string()))?;
        let next = parser.peek_token();
        if next.token != Token::EOF {
            return Err(error(format!(
                "unexpected {} after the expression",
                next.token
            )));
        }
        let root = lower(&expr).map_err(error)?;
        let mut columns = Vec::new();
        root.columns(&mut columns);
        Ok(SqlRule {
            text: text.to_owned(),
            root,
            columns,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The columns the rule reads, each once, in order of first mention.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Whether each row of `batch` passes: true only where the expression is true.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<Vec<bool>, SqlRuleError> {
        let error = |problem: String| SqlRuleError {
            rule: self.text.clone(),
            problem,
        };
        let n = batch.num_rows();
        let value = eval(&self.root, batch).map_err(error)?;
        let array = value.expand(n).map_err(error)?;
        let Some(result) = array.as_boolean_opt() else {
            return Err(error(format!(
                "the expression gives {}, not true or false",
                array.data_type()
            )));
        };
        Ok((0..n)
            .map(|i| result.is_valid(i) && result.value(i))
            .collect())
    }
}

impl Node {
    fn columns(&self, out: &mut Vec<String>) {
        match self {
            Node::Column(name) => {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
            Node::Number(_) | Node::Text(_) | Node::Bool(_) | Node::Null => {}
            Node::Not(e) | Node::Neg(e) | Node::Call(_, e) => e.columns(out),
            Node::IsNull { expr, .. } | Node::Like { expr, .. } => expr.columns(out),
            Node::And(a, b) | Node::Or(a, b) | Node::Compare(a, _, b) | Node::Arith(a, _, b) => {
                a.columns(out);
                b.columns(out);
            }
        }
    }
}

/// The sqlparser tree to ours, refusing what the rule does not support.
fn lower(expr: &Expr) -> Result<Node, String> {
    let boxed = |e: &Expr| lower(e).map(Box::new);
    Ok(match expr {
        Expr::Identifier(ident) => Node::Column(ident.value.clone()),
        Expr::CompoundIdentifier(parts) if parts.len() == 1 => Node::Column(parts[0].value.clone()),
        Expr::Nested(inner) => lower(inner)?,
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => Node::Number(
                n.parse()
                    .map_err(|_| format!("{n} is not a number this rule can use"))?,
            ),
            Value::SingleQuotedString(s) => Node::Text(s.clone()),
            Value::Boolean(b) => Node::Bool(*b),
            Value::Null => Node::Null,
            other => return Err(format!("the literal {other} is not supported")),
        },
        Expr::UnaryOp { op, expr } => match op {
            UnaryOperator::Not => Node::Not(boxed(expr)?),
            UnaryOperator::Minus => Node::Neg(boxed(expr)?),
            UnaryOperator::Plus => lower(expr)?,
            other => return Err(format!("the operator {other} is not supported")),
        },
        Expr::BinaryOp { left, op, right } => {
            let (l, r) = (boxed(left)?, boxed(right)?);
            match op {
                BinaryOperator::And => Node::And(l, r),
                BinaryOperator::Or => Node::Or(l, r),
                BinaryOperator::Eq => Node::Compare(l, Compare::Eq, r),
                BinaryOperator::NotEq => Node::Compare(l, Compare::NotEq, r),
                BinaryOperator::Lt => Node::Compare(l, Compare::Lt, r),
                BinaryOperator::LtEq => Node::Compare(l, Compare::LtEq, r),
                BinaryOperator::Gt => Node::Compare(l, Compare::Gt, r),
                BinaryOperator::GtEq => Node::Compare(l, Compare::GtEq, r),
                BinaryOperator::Plus => Node::Arith(l, Arith::Add, r),
                BinaryOperator::Minus => Node::Arith(l, Arith::Sub, r),
                BinaryOperator::Multiply => Node::Arith(l, Arith::Mul, r),
                BinaryOperator::Divide => Node::Arith(l, Arith::Div, r),
                BinaryOperator::Modulo => Node::Arith(l, Arith::Rem, r),
                other => return Err(format!("the operator {other} is not supported")),
            }
        }
        Expr::IsNull(e) => Node::IsNull {
            expr: boxed(e)?,
            negated: false,
        },
        Expr::IsNotNull(e) => Node::IsNull {
            expr: boxed(e)?,
            negated: true,
        },
        Expr::IsTrue(e) => Node::Compare(boxed(e)?, Compare::Eq, Box::new(Node::Bool(true))),
        Expr::IsFalse(e) => Node::Compare(boxed(e)?, Compare::Eq, Box::new(Node::Bool(false))),
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let subject = lower(expr)?;
            let mut any: Option<Node> = None;
            for item in list {
                let eq = Node::Compare(
                    Box::new(subject.clone()),
                    Compare::Eq,
                    Box::new(lower(item)?),
                );
                any = Some(match any {
                    None => eq,
                    Some(prev) => Node::Or(Box::new(prev), Box::new(eq)),
                });
            }
            let any = any.ok_or("IN () needs at least one value")?;
            if *negated {
                Node::Not(Box::new(any))
            } else {
                any
            }
        }
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let subject = lower(expr)?;
            let within = Node::And(
                Box::new(Node::Compare(
                    Box::new(subject.clone()),
                    Compare::GtEq,
                    boxed(low)?,
                )),
                Box::new(Node::Compare(
                    Box::new(subject),
                    Compare::LtEq,
                    boxed(high)?,
                )),
            );
            if *negated {
                Node::Not(Box::new(within))
            } else {
                within
            }
        }
        Expr::Like {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => like(expr, pattern, *negated, false)?,
        Expr::ILike {
            negated,
            any: false,
            expr,
            pattern,
            escape_char: None,
        } => like(expr, pattern, *negated, true)?,
        Expr::Function(f) => {
            let name = match f.name.0.as_slice() {
                [ObjectNamePart::Identifier(ident)] => ident.value.to_ascii_lowercase(),
                _ => return Err(format!("the function {} is not supported", f.name)),
            };
            let func = match name.as_str() {
                "lower" => Func::Lower,
                "upper" => Func::Upper,
                "length" | "char_length" | "character_length" => Func::Length,
                "abs" => Func::Abs,
                _ => return Err(format!("the function {} is not supported", f.name)),
            };
            let FunctionArguments::List(list) = &f.args else {
                return Err(format!("{name} takes one argument"));
            };
            match list.args.as_slice() {
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))]
                    if list.duplicate_treatment.is_none() && list.clauses.is_empty() =>
                {
                    Node::Call(func, boxed(arg)?)
                }
                _ => return Err(format!("{name} takes one argument")),
            }
        }
        other => return Err(format!("{other} is not supported")),
    })
}

fn like(
    expr: &Expr,
    pattern: &Expr,
    negated: bool,
    case_insensitive: bool,
) -> Result<Node, String> {
    let Node::Text(pattern) = lower(pattern)? else {
        return Err("a LIKE pattern must be a 'text' literal".into());
    };
    Ok(Node::Like {
        expr: Box::new(lower(expr)?),
        pattern,
        negated,
        case_insensitive,
    })
}

/// A value during evaluation: a column-length array, or one value for every row.
enum Val {
    Array(ArrayRef),
    Scalar(ArrayRef),
}

impl Val {
    fn array(&self) -> &ArrayRef {
        match self {
            Val::Array(a) | Val::Scalar(a) => a,
        }
    }

    fn datum(&self) -> Box<dyn Datum + '_> {
        match self {
            Val::Array(a) => Box::new(a),
            Val::Scalar(a) => Box::new(Scalar::new(a)),
        }
    }

    /// Wraps a kernel's result: scalar when every input was.
    fn same_shape(&self, other: Option<&Val>, result: ArrayRef) -> Val {
        let scalar =
            matches!(self, Val::Scalar(_)) && other.is_none_or(|o| matches!(o, Val::Scalar(_)));
        if scalar {
            Val::Scalar(result)
        } else {
            Val::Array(result)
        }
    }

    /// The value as an array of `n` rows.
    fn expand(self, n: usize) -> Result<ArrayRef, String> {
        match self {
            Val::Array(a) => Ok(a),
            Val::Scalar(a) => repeat_first(&a, n),
        }
    }
}

/// `n` copies of the first value of `a`.
fn repeat_first(a: &dyn Array, n: usize) -> Result<ArrayRef, String> {
    let indices = UInt32Array::from(vec![0u32; n]);
    arrow_select::take::take(a, &indices, None).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Number,
    Text,
    Bool,
    Null,
}

fn kind(t: &DataType) -> Option<Kind> {
    Some(match t {
        DataType::Null => Kind::Null,
        DataType::Boolean => Kind::Bool,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Text,
        DataType::Dictionary(_, value) => return kind(value).filter(|k| *k == Kind::Text),
        t if t.is_numeric() => Kind::Number,
        _ => return None,
    })
}

/// Numbers as f64 with NaN read as NULL; text as Utf8.
fn normalise(a: &ArrayRef) -> Result<ArrayRef, String> {
    match kind(a.data_type()) {
        Some(Kind::Number) => {
            let f = arrow_cast::cast(a, &DataType::Float64).map_err(|e| e.to_string())?;
            Ok(nan_to_null(
                f.as_primitive::<arrow_array::types::Float64Type>(),
            ))
        }
        Some(Kind::Text) => arrow_cast::cast(a, &DataType::Utf8).map_err(|e| e.to_string()),
        Some(Kind::Bool | Kind::Null) => Ok(a.clone()),
        None => Err(format!("a {} column cannot be used", a.data_type())),
    }
}

fn nan_to_null(a: &Float64Array) -> ArrayRef {
    if !a.values().iter().any(|v| v.is_nan()) {
        return Arc::new(a.clone());
    }
    Arc::new(
        a.iter()
            .map(|v| v.filter(|x| !x.is_nan()))
            .collect::<Float64Array>(),
    )
}

fn eval(node: &Node, batch: &RecordBatch) -> Result<Val, String> {
    Ok(match node {
        Node::Column(name) => {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| format!("no column {name:?} in the metadata"))?;
            Val::Array(normalise(column).map_err(|e| format!("column {name:?}: {e}"))?)
        }
        Node::Number(v) => Val::Scalar(Arc::new(Float64Array::from(vec![*v]))),
        Node::Text(s) => Val::Scalar(Arc::new(StringArray::from(vec![s.as_str()]))),
        Node::Bool(b) => Val::Scalar(Arc::new(BooleanArray::from(vec![*b]))),
        Node::Null => Val::Scalar(new_null_array(&DataType::Null, 1)),
        Node::Not(e) => {
            let v = eval(e, batch)?;
            let b = boolean(&v, "NOT")?;
            let out = arrow_arith::boolean::not(&b).map_err(|e| e.to_string())?;
            v.same_shape(None, Arc::new(out))
        }
        Node::Neg(e) => {
            let v = eval(e, batch)?;
            let out = match kind(v.array().data_type()) {
                Some(Kind::Number) => {
                    arrow_arith::numeric::neg(v.array()).map_err(|e| e.to_string())?
                }
                Some(Kind::Null) => v.array().clone(),
                _ => return Err(format!("cannot negate {}", v.array().data_type())),
            };
            v.same_shape(None, out)
        }
        Node::And(a, b) | Node::Or(a, b) => {
            let (va, vb) = (eval(a, batch)?, eval(b, batch)?);
            let and = matches!(node, Node::And(..));
            let op = if and { "AND" } else { "OR" };
            let scalar = matches!((&va, &vb), (Val::Scalar(_), Val::Scalar(_)));
            let n = if scalar { 1 } else { batch.num_rows() };
            let la = widen(boolean(&va, op)?, n)?;
            let lb = widen(boolean(&vb, op)?, n)?;
            let out = if and {
                arrow_arith::boolean::and_kleene(&la, &lb)
            } else {
                arrow_arith::boolean::or_kleene(&la, &lb)
            }
            .map_err(|e| e.to_string())?;
            va.same_shape(Some(&vb), Arc::new(out))
        }
        Node::Compare(a, op, b) => {
            let (va, vb) = (eval(a, batch)?, eval(b, batch)?);
            let (ka, kb) = (kind(va.array().data_type()), kind(vb.array().data_type()));
            if ka == Some(Kind::Null) || kb == Some(Kind::Null) {
                let len = if matches!((&va, &vb), (Val::Scalar(_), Val::Scalar(_))) {
                    1
                } else {
                    batch.num_rows()
                };
                let out = new_null_array(&DataType::Boolean, len);
                return Ok(va.same_shape(Some(&vb), out));
            }
            if ka != kb {
                return Err(format!(
                    "cannot compare {} with {}",
                    va.array().data_type(),
                    vb.array().data_type()
                ));
            }
            let (da, db) = (va.datum(), vb.datum());
            let out = match op {
                Compare::Eq => arrow_ord::cmp::eq(da.as_ref(), db.as_ref()),
                Compare::NotEq => arrow_ord::cmp::neq(da.as_ref(), db.as_ref()),
                Compare::Lt => arrow_ord::cmp::lt(da.as_ref(), db.as_ref()),
                Compare::LtEq => arrow_ord::cmp::lt_eq(da.as_ref(), db.as_ref()),
                Compare::Gt => arrow_ord::cmp::gt(da.as_ref(), db.as_ref()),
                Compare::GtEq => arrow_ord::cmp::gt_eq(da.as_ref(), db.as_ref()),
            }
            .map_err(|e| e.to_string())?;
            va.same_shape(Some(&vb), Arc::new(out))
        }
        Node::Arith(a, op, b) => {
            let (va, vb) = (eval(a, batch)?, eval(b, batch)?);
            for v in [&va, &vb] {
                if !matches!(kind(v.array().data_type()), Some(Kind::Number | Kind::Null)) {
                    return Err(format!("cannot do arithmetic on {}", v.array().data_type()));
                }
            }
            let cast = |v: &Val| -> Result<Val, String> {
                let a =
                    arrow_cast::cast(v.array(), &DataType::Float64).map_err(|e| e.to_string())?;
                Ok(match v {
                    Val::Array(_) => Val::Array(a),
                    Val::Scalar(_) => Val::Scalar(a),
                })
            };
            let (va, vb) = (cast(&va)?, cast(&vb)?);
            let (da, db) = (va.datum(), vb.datum());
            let out = match op {
                Arith::Add => arrow_arith::numeric::add(da.as_ref(), db.as_ref()),
                Arith::Sub => arrow_arith::numeric::sub(da.as_ref(), db.as_ref()),
                Arith::Mul => arrow_arith::numeric::mul(da.as_ref(), db.as_ref()),
                Arith::Div => arrow_arith::numeric::div(da.as_ref(), db.as_ref()),
                Arith::Rem => arrow_arith::numeric::rem(da.as_ref(), db.as_ref()),
            }
            .map_err(|e| e.to_string())?;
            let out = nan_to_null(out.as_primitive::<arrow_array::types::Float64Type>());
            va.same_shape(Some(&vb), out)
        }
        Node::IsNull { expr, negated } => {
            let v = eval(expr, batch)?;
            let out = if *negated {
                arrow_arith::boolean::is_not_null(v.array())
            } else {
                arrow_arith::boolean::is_null(v.array())
            }
            .map_err(|e| e.to_string())?;
            v.same_shape(None, Arc::new(out))
        }
        Node::Like {
            expr,
            pattern,
            negated,
            case_insensitive,
        } => {
            let v = eval(expr, batch)?;
            match kind(v.array().data_type()) {
                Some(Kind::Text) => {}
                Some(Kind::Null) => {
                    return Ok(
                        v.same_shape(None, new_null_array(&DataType::Boolean, v.array().len()))
                    );
                }
                _ => return Err(format!("LIKE needs text, not {}", v.array().data_type())),
            }
            let pattern = Scalar::new(StringArray::from(vec![pattern.as_str()]));
            let d = v.datum();
            let out = match (negated, case_insensitive) {
                (false, false) => arrow_string::like::like(d.as_ref(), &pattern),
                (true, false) => arrow_string::like::nlike(d.as_ref(), &pattern),
                (false, true) => arrow_string::like::ilike(d.as_ref(), &pattern),
                (true, true) => arrow_string::like::nilike(d.as_ref(), &pattern),
            }
            .map_err(|e| e.to_string())?;
            v.same_shape(None, Arc::new(out))
        }
        Node::Call(func, arg) => {
            let v = eval(arg, batch)?;
            let a = v.array();
            let out: ArrayRef = match (func, kind(a.data_type())) {
                (_, Some(Kind::Null)) => a.clone(),
                (Func::Lower | Func::Upper | Func::Length, Some(Kind::Text)) => {
                    let s = a.as_string::<i32>();
                    match func {
                        Func::Lower => Arc::new(
                            s.iter()
                                .map(|v| v.map(str::to_lowercase))
                                .collect::<StringArray>(),
                        ),
                        Func::Upper => Arc::new(
                            s.iter()
                                .map(|v| v.map(str::to_uppercase))
                                .collect::<StringArray>(),
                        ),
                        _ => Arc::new(
                            s.iter()
                                .map(|v| v.map(|t| t.chars().count() as f64))
                                .collect::<Float64Array>(),
                        ),
                    }
                }
                (Func::Abs, Some(Kind::Number)) => {
                    let f = a.as_primitive::<arrow_array::types::Float64Type>();
                    Arc::new(f.unary::<_, arrow_array::types::Float64Type>(f64::abs))
                }
                (func, _) => {
                    return Err(format!("{func:?} cannot take {}", a.data_type()).to_lowercase());
                }
            };
            v.same_shape(None, out)
        }
    })
}

fn boolean(v: &Val, op: &str) -> Result<BooleanArray, String> {
    let a = v.array();
    match a.data_type() {
        DataType::Boolean => Ok(a.as_boolean().clone()),
        DataType::Null => Ok(BooleanArray::new_null(a.len())),
        other => Err(format!("{op} needs true/false values, not {other}")),
    }
}

/// A boolean array of `n` rows from one of `n` rows or of one.
fn widen(a: BooleanArray, n: usize) -> Result<BooleanArray, String> {
    if a.len() == n {
        return Ok(a);
    }
    Ok(repeat_first(&a, n)?.as_boolean().clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, LargeStringArray};

    fn batch() -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            (
                "LANGUAGE",
                Arc::new(StringArray::from(vec![
                    Some("en"),
                    Some("de"),
                    None,
                    Some("EN"),
                    Some("fr"),
                ])) as ArrayRef,
            ),
            (
                "LICENSE",
                Arc::new(LargeStringArray::from(vec![
                    Some("cc-by"),
                    None,
                    Some("?"),
                    Some("cc0"),
                    Some("mit"),
                ])) as ArrayRef,
            ),
            (
                "WIDTH",
                Arc::new(Int64Array::from(vec![
                    Some(512),
                    Some(100),
                    Some(300),
                    None,
                    Some(1024),
                ])) as ArrayRef,
            ),
            (
                "score",
                Arc::new(Float64Array::from(vec![
                    Some(0.5),
                    Some(f64::NAN),
                    Some(0.9),
                    Some(0.1),
                    None,
                ])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn passes(rule: &str) -> Vec<bool> {
        SqlRule::parse(rule).unwrap().evaluate(&batch()).unwrap()
    }

    #[test]
    fn comparisons_logic_and_nulls_follow_sql() {
        assert_eq!(
            passes("LANGUAGE = 'en'"),
            [true, false, false, false, false]
        );
        assert_eq!(
            passes("lower(LANGUAGE) = 'en'"),
            [true, false, false, true, false]
        );
        assert_eq!(
            passes("LANGUAGE IN ('en', 'de')"),
            [true, true, false, false, false]
        );
        // NULL IN (...) is NULL, and NOT NULL is NULL: row 2 fails both ways.
        assert_eq!(
            passes("LANGUAGE NOT IN ('en', 'de')"),
            [false, false, false, true, true]
        );
        assert_eq!(
            passes("LICENSE IS NOT NULL AND LICENSE <> '?'"),
            [true, false, false, true, true]
        );
        assert_eq!(
            passes("LICENSE IS NULL OR WIDTH > 1000"),
            [false, true, false, false, true]
        );
        assert_eq!(
            passes("WIDTH * 2 >= 1000 OR NOT (score < 0.3)"),
            [true, false, true, false, true]
        );
        assert_eq!(
            passes("WIDTH BETWEEN 200 AND 600"),
            [true, false, true, false, false]
        );
        assert_eq!(
            passes("LICENSE LIKE 'cc%'"),
            [true, false, false, true, false]
        );
        assert_eq!(
            passes("LANGUAGE ILIKE 'E_'"),
            [true, false, false, true, false]
        );
        assert_eq!(
            passes("length(LICENSE) = 3 AND abs(-WIDTH) > 0"),
            [false, false, false, false, true]
        );
        // NaN is read as NULL: it passes no comparison, as the built-in rules fail NaN scores.
        assert_eq!(
            passes("score > 0.2 OR score <= 0.2"),
            [true, false, true, true, false]
        );
        assert_eq!(passes("TRUE"), [true; 5]);
        assert_eq!(passes("NULL = NULL"), [false; 5]);
        assert_eq!(passes("WIDTH % 3 = 0"), [false, false, true, false, false]);
    }

    #[test]
    fn columns_are_listed_once_in_order() {
        let rule =
            SqlRule::parse("b > 1 AND (a = 'x' OR b < 5) AND \"Mixed Case\" IS NULL").unwrap();
        assert_eq!(rule.columns(), ["b", "a", "Mixed Case"]);
    }

    #[test]
    fn what_the_rule_cannot_do_is_an_error_that_says_so() {
        for (rule, says) in [
            ("WIDTH >", "Expected"),
            ("WIDTH > 1 garbage", "unexpected"),
            ("WIDTH IN (SELECT 1)", "not supported"),
            ("regexp_like(URL, 'x')", "not supported"),
            ("LICENSE LIKE LANGUAGE", "pattern"),
            ("a.b > 1", "not supported"),
        ] {
            let err = SqlRule::parse(rule).unwrap_err().to_string();
            assert!(err.contains(says), "{rule}: {err}");
        }
        for (rule, says) in [
            ("LANGUAGE = 1", "cannot compare"),
            ("WIDTH", "not true or false"),
            ("NOPE = 1", "no column \"NOPE\""),
            ("LANGUAGE + 1 > 0", "arithmetic"),
            ("WIDTH AND TRUE", "AND needs"),
        ] {
            let err = SqlRule::parse(rule)
                .unwrap()
                .evaluate(&batch())
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{rule}: {err}");
        }
    }
}
