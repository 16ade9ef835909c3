//! Running a parsed query: checked whole first (operation, variables, fragments, directives,
//! depth, size), then resolved field by field over the stored JSON, every resource through
//! `Store::read`, `Store::vread` or `Store::search` as the caller.

use super::{
    check_nesting, search_name, Cause, FieldError, Refusal, Request, Response, Root,
    MAX_ANSWER_BYTES, MAX_DEPTH, MAX_FIELDS, MAX_LIST, MAX_QUERY_BYTES, MAX_RESOURCES,
    MAX_SEARCHES,
};
use crate::access::AccessContext;
use crate::fhir::reference::Reference;
use crate::fhir::{printable, ResourceId, ResourceType};
use crate::search::query::{self as search_query, Total};
use crate::store::{Store, StoreError, StoredResource};
use async_graphql_parser::types::{
    DocumentOperations, ExecutableDocument, Field, FragmentDefinition, OperationDefinition,
    OperationType, Selection, SelectionSet,
};
use async_graphql_parser::Positioned;
use async_graphql_value::{ConstValue, Value as Argument};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a field stopped: it answers `null` with an error, or the whole query stops.
enum Fail {
    Field(Cause),
    Stop(Refusal),
}

impl From<Refusal> for Fail {
    fn from(r: Refusal) -> Fail {
        Fail::Stop(r)
    }
}

fn query_error(message: impl Into<String>) -> Fail {
    Fail::Field(Cause::Query(message.into()))
}

/// A store error as a field's: what a read or search answers a client with (not found,
/// deleted, refused, a search it cannot run) is the field's; a failure of the store stops the
/// query, as it would stop the read.
fn store_fail(e: StoreError) -> Fail {
    match e {
        StoreError::NotFound(_)
        | StoreError::Gone { .. }
        | StoreError::Erased(_)
        | StoreError::Denied(_)
        | StoreError::BadRequest(_)
        | StoreError::Unsupported(_) => Fail::Field(Cause::Store(e)),
        other => Fail::Stop(Refusal::Store(other)),
    }
}

/// Is this the answer a read gives for something the caller cannot have: missing, deleted or
/// hidden (all the same to the caller).
fn is_absent(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::NotFound(_)
            | StoreError::Gone { .. }
            | StoreError::Erased(_)
            | StoreError::Denied(crate::access::Denied::Hidden)
    )
}

pub(super) async fn run(
    store: &Store,
    ctx: &AccessContext,
    base: &str,
    root: Root,
    request: Request,
) -> Result<Response, Refusal> {
    if request.query.len() > MAX_QUERY_BYTES {
        return Err(Refusal::Limit(format!(
            "the query is longer than {MAX_QUERY_BYTES} bytes"
        )));
    }
    check_nesting(&request.query)?;
    let doc = async_graphql_parser::parse_query(&request.query).map_err(syntax)?;
    let operation = pick_operation(&doc, request.operation_name.as_deref())?;
    if operation.ty != OperationType::Query {
        return Err(Refusal::Bad(
            "only queries are supported: mutations and subscriptions are not (write with the \
             REST API)"
                .into(),
        ));
    }
    let variables = bind_variables(&operation.variable_definitions, request.variables)?;
    let mut exec = Exec {
        store,
        ctx,
        base: base.trim_end_matches('/'),
        fragments: &doc.fragments,
        variables,
        resources: 0,
        searches: 0,
        answer_bytes: 0,
        errors: Vec::new(),
    };
    let mut fields = 0;
    exec.check_directives(&operation.directives)?;
    exec.check(&operation.selection_set.node, 1, &mut fields)?;
    let sets = vec![&operation.selection_set.node];
    let data = match root {
        Root::System => exec.system(sets).await?,
        Root::Instance(rt, id) => {
            // The root is the resource: what a read would refuse, this refuses the same way.
            exec.take_resource()?;
            let stored = store.read(ctx, rt, &id).await.map_err(Refusal::Store)?;
            let body = body_of(&stored)?;
            exec.object(&body, &body, sets, Vec::new()).await?
        }
    };
    Ok(Response {
        data,
        errors: exec.errors,
    })
}

/// The parser's error, by position only (the parser's message quotes the query's text).
fn syntax(e: async_graphql_parser::Error) -> Refusal {
    use async_graphql_parser::Error as E;
    Refusal::Bad(match e {
        E::Syntax { start, .. } => format!(
            "the query is not valid GraphQL: syntax error at line {}, column {}",
            start.line, start.column
        ),
        E::MultipleOperations { .. } => {
            "an anonymous operation must be the only one in the query".into()
        }
        E::OperationDuplicated { operation, .. } => format!(
            "the operation '{}' is defined twice",
            printable(operation.as_str())
        ),
        E::FragmentDuplicated { fragment, .. } => format!(
            "the fragment '{}' is defined twice",
            printable(fragment.as_str())
        ),
        E::MissingOperation => "the query holds no operation".into(),
        E::RecursionLimitExceeded => "the query nests too deep".into(),
        _ => "the query is not valid GraphQL".into(),
    })
}

fn pick_operation<'d>(
    doc: &'d ExecutableDocument,
    name: Option<&str>,
) -> Result<&'d OperationDefinition, Refusal> {
    let name = name.filter(|n| !n.is_empty());
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => Ok(&op.node),
        (DocumentOperations::Multiple(ops), Some(name)) => {
            ops.get(name).map(|op| &op.node).ok_or_else(|| {
                Refusal::Bad(format!("the query has no operation '{}'", printable(name)))
            })
        }
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => Ok(&ops
            .values()
            .next()
            .ok_or(Refusal::Bad("no operation".into()))?
            .node),
        (DocumentOperations::Multiple(_), None) => Err(Refusal::Bad(
            "the query holds several operations: name one with operationName".into(),
        )),
    }
}

fn bind_variables(
    definitions: &[Positioned<async_graphql_parser::types::VariableDefinition>],
    given: Option<Value>,
) -> Result<HashMap<String, ConstValue>, Refusal> {
    let given = match given {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(Refusal::Bad("variables must be a JSON object".into())),
    };
    let mut bound = HashMap::new();
    for definition in definitions {
        let name = definition.node.name.node.as_str();
        let value = match given.get(name) {
            Some(v) => ConstValue::from_json(v.clone()).map_err(|_| {
                Refusal::Bad(format!("the variable ${} is not a value", printable(name)))
            })?,
            None => definition
                .node
                .default_value()
                .cloned()
                .unwrap_or(ConstValue::Null),
        };
        if value == ConstValue::Null && !definition.node.var_type.node.nullable {
            return Err(Refusal::Bad(format!(
                "the variable ${} is required",
                printable(name)
            )));
        }
        bound.insert(name.to_string(), value);
    }
    Ok(bound)
}

fn body_of(stored: &StoredResource) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice(&stored.body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Refusal::Store(StoreError::Integrity)),
    }
}

/// An argument's value as search or filter text.
fn scalar_text(name: &str, value: &ConstValue) -> Result<String, Fail> {
    match value {
        ConstValue::String(s) => Ok(s.clone()),
        ConstValue::Enum(e) => Ok(e.as_str().to_string()),
        ConstValue::Number(n) => Ok(n.to_string()),
        ConstValue::Boolean(b) => Ok(b.to_string()),
        _ => Err(query_error(format!(
            "the argument '{}' must be a string, number, boolean or enum value",
            printable(name)
        ))),
    }
}

fn whole_number(name: &str, value: &ConstValue) -> Result<usize, Fail> {
    scalar_text(name, value)?.parse().map_err(|_| {
        query_error(format!(
            "the argument '{}' must be a whole number",
            printable(name)
        ))
    })
}

/// Does a JSON value (or any item of a JSON list) read as `want`?
fn matches_text(have: &Value, want: &str) -> bool {
    match have {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        Value::Array(items) => items.iter().any(|i| matches_text(i, want)),
        _ => false,
    }
}

fn is_resource(node: &Map<String, Value>) -> bool {
    node.get("resourceType").is_some_and(Value::is_string)
}

/// Fields of a selection under their response keys, fields with one key merged (their
/// selections are selected together).
type Grouped<'q> = Vec<(String, Vec<&'q Positioned<Field>>)>;

struct Exec<'q> {
    store: &'q Store,
    ctx: &'q AccessContext,
    base: &'q str,
    fragments: &'q HashMap<async_graphql_value::Name, Positioned<FragmentDefinition>>,
    variables: HashMap<String, ConstValue>,
    resources: usize,
    searches: usize,
    answer_bytes: usize,
    errors: Vec<FieldError>,
}

impl<'q> Exec<'q> {
    fn argument(&self, value: &Positioned<Argument>) -> Result<ConstValue, String> {
        value.node.clone().into_const_with(|name| {
            self.variables
                .get(name.as_str())
                .cloned()
                .ok_or_else(|| format!("the variable ${} is not defined", printable(&name)))
        })
    }

    /// The whole query, before anything is read: known fragments, defined variables, supported
    /// directives, and its depth and size with fragments expanded (a spread counts as a level,
    /// so a fragment that spreads itself is refused as too deep).
    fn check(
        &self,
        set: &'q SelectionSet,
        depth: usize,
        fields: &mut usize,
    ) -> Result<(), Refusal> {
        if depth > MAX_DEPTH {
            return Err(Refusal::Limit(format!(
                "the query nests fields (and fragments) deeper than {MAX_DEPTH} levels"
            )));
        }
        for item in &set.items {
            *fields += 1;
            if *fields > MAX_FIELDS {
                return Err(Refusal::Limit(format!(
                    "the query holds more than {MAX_FIELDS} fields, fragments expanded"
                )));
            }
            self.check_directives(item.node.directives())?;
            match &item.node {
                Selection::Field(f) => {
                    for (_, value) in &f.node.arguments {
                        self.argument(value).map_err(Refusal::Bad)?;
                    }
                    self.check(&f.node.selection_set.node, depth + 1, fields)?;
                }
                Selection::FragmentSpread(s) => {
                    let name = s.node.fragment_name.node.as_str();
                    let fragment = self.fragments.get(name).ok_or_else(|| {
                        Refusal::Bad(format!("the fragment '{}' is not defined", printable(name)))
                    })?;
                    self.check_directives(&fragment.node.directives)?;
                    self.check(&fragment.node.selection_set.node, depth + 1, fields)?;
                }
                Selection::InlineFragment(i) => {
                    self.check(&i.node.selection_set.node, depth + 1, fields)?;
                }
            }
        }
        Ok(())
    }

    fn check_directives(
        &self,
        directives: &[Positioned<async_graphql_parser::types::Directive>],
    ) -> Result<(), Refusal> {
        for d in directives {
            let name = d.node.name.node.as_str();
            if name != "skip" && name != "include" {
                return Err(Refusal::Bad(format!(
                    "the directive @{} is not supported (only @skip and @include)",
                    printable(name)
                )));
            }
            match d.node.get_argument("if").map(|v| self.argument(v)) {
                Some(Ok(ConstValue::Boolean(_))) => {}
                Some(Err(e)) => return Err(Refusal::Bad(e)),
                _ => {
                    return Err(Refusal::Bad(format!(
                        "@{name} needs an argument 'if' that is true or false"
                    )))
                }
            }
        }
        Ok(())
    }

    /// `@skip(if: true)` or `@include(if: false)` leaves a selection out.
    fn included(&self, directives: &[Positioned<async_graphql_parser::types::Directive>]) -> bool {
        directives.iter().all(|d| {
            let on = matches!(
                d.node.get_argument("if").map(|v| self.argument(v)),
                Some(Ok(ConstValue::Boolean(true)))
            );
            if d.node.name.node.as_str() == "skip" {
                !on
            } else {
                on
            }
        })
    }

    /// The fields `sets` select on a node of resource type `rt` (`None`: an element, whose
    /// type conditions are not checked), fragments expanded.
    fn collect(&self, sets: &[&'q SelectionSet], rt: Option<&str>) -> Grouped<'q> {
        let mut out: Grouped<'q> = Vec::new();
        for set in sets {
            self.collect_into(set, rt, &mut out);
        }
        out
    }

    fn collect_into(&self, set: &'q SelectionSet, rt: Option<&str>, out: &mut Grouped<'q>) {
        let applies =
            |on: &str| rt.is_none_or(|rt| on == rt || on == "Resource" || on == "DomainResource");
        for item in &set.items {
            if !self.included(item.node.directives()) {
                continue;
            }
            match &item.node {
                Selection::Field(f) => {
                    let key = f.node.response_key().node.as_str();
                    match out.iter_mut().find(|(k, _)| k == key) {
                        Some((_, group)) => group.push(f),
                        None => out.push((key.to_string(), vec![f])),
                    }
                }
                Selection::FragmentSpread(s) => {
                    if let Some(fragment) = self.fragments.get(s.node.fragment_name.node.as_str()) {
                        if applies(fragment.node.type_condition.node.on.node.as_str())
                            && self.included(&fragment.node.directives)
                        {
                            self.collect_into(&fragment.node.selection_set.node, rt, out);
                        }
                    }
                }
                Selection::InlineFragment(i) => {
                    let on = i.node.type_condition.as_ref();
                    if on.is_none_or(|c| applies(c.node.on.node.as_str())) {
                        self.collect_into(&i.node.selection_set.node, rt, out);
                    }
                }
            }
        }
    }

    /// A field's answer: its value, or `null` with its error recorded at `path`; a refusal of
    /// the whole query passes through.
    fn settle(
        &mut self,
        answered: Result<Value, Fail>,
        path: Vec<Value>,
        pos: async_graphql_parser::Pos,
    ) -> Result<Value, Refusal> {
        match answered {
            Ok(v) => Ok(v),
            Err(Fail::Stop(r)) => Err(r),
            Err(Fail::Field(cause)) => {
                self.errors.push(FieldError {
                    path,
                    line: pos.line,
                    column: pos.column,
                    cause,
                });
                Ok(Value::Null)
            }
        }
    }

    /// A search costs its query and its audit event whether or not it matches: counted before
    /// it runs.
    fn take_search(&mut self) -> Result<(), Refusal> {
        self.searches += 1;
        if self.searches > MAX_SEARCHES {
            return Err(Refusal::Limit(format!(
                "the query runs more than {MAX_SEARCHES} searches"
            )));
        }
        Ok(())
    }

    fn take_resource(&mut self) -> Result<(), Refusal> {
        self.resources += 1;
        if self.resources > MAX_RESOURCES {
            return Err(Refusal::Limit(format!(
                "the query resolves more than {MAX_RESOURCES} resources"
            )));
        }
        Ok(())
    }

    fn spend(&mut self, bytes: usize) -> Result<(), Refusal> {
        self.answer_bytes += bytes;
        if self.answer_bytes > MAX_ANSWER_BYTES {
            return Err(Refusal::Limit(format!(
                "the answer would be larger than {MAX_ANSWER_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// The system root: `Type(id: …)` and `TypeList(…)`.
    async fn system(&mut self, sets: Vec<&'q SelectionSet>) -> Result<Value, Refusal> {
        let groups = self.collect(&sets, None);
        let mut out = Map::new();
        for (key, fields) in groups {
            let first = fields[0];
            let sets = selections(&fields);
            let here = vec![Value::String(key.clone())];
            self.spend(key.len() + 4)?;
            let answered = self.root_field(&first.node, sets, here.clone()).await;
            let value = self.settle(answered, here, first.pos)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }

    async fn root_field(
        &mut self,
        field: &'q Field,
        sets: Vec<&'q SelectionSet>,
        path: Vec<Value>,
    ) -> Result<Value, Fail> {
        let name = field.name.node.as_str();
        if name == "__typename" {
            return Ok(Value::String("Query".into()));
        }
        if let Some(rt) = ResourceType::parse(name) {
            return self.instance(rt, field, sets, path).await;
        }
        if let Some(rt) = name.strip_suffix("List").and_then(ResourceType::parse) {
            return self.list(rt, field, sets, path, None).await;
        }
        if name
            .strip_suffix("Connection")
            .and_then(ResourceType::parse)
            .is_some()
        {
            return Err(connection_unsupported());
        }
        Err(query_error(format!(
            "'{}' is not a resource type or a list of one (TypeList)",
            printable(name)
        )))
    }

    /// `Type(id: "x")`: a read.
    async fn instance(
        &mut self,
        rt: ResourceType,
        field: &'q Field,
        sets: Vec<&'q SelectionSet>,
        path: Vec<Value>,
    ) -> Result<Value, Fail> {
        let mut id = None;
        for (name, value) in &field.arguments {
            let value = self.argument(value).map_err(query_error)?;
            match name.node.as_str() {
                "id" => id = Some(scalar_text("id", &value)?),
                other => {
                    return Err(query_error(format!(
                        "{rt}(…) takes only an id, not '{}'",
                        printable(other)
                    )))
                }
            }
        }
        let id = id.ok_or_else(|| query_error(format!("{rt}(…) needs an id: {rt}(id: \"…\")")))?;
        let id = ResourceId::parse(&id).map_err(|e| query_error(e.to_string()))?;
        if sets.is_empty() {
            return Err(query_error(format!("select the fields of {rt}")));
        }
        self.take_resource()?;
        let stored = self
            .store
            .read(self.ctx, rt, &id)
            .await
            .map_err(store_fail)?;
        let body = body_of(&stored)?;
        Ok(self.object(&body, &body, sets, path).await?)
    }

    /// `TypeList(…)`: a search (its first page); inside a resource, `_reference` names the
    /// search parameter that refers to it (`target`).
    async fn list(
        &mut self,
        rt: ResourceType,
        field: &'q Field,
        sets: Vec<&'q SelectionSet>,
        path: Vec<Value>,
        target: Option<String>,
    ) -> Result<Value, Fail> {
        if sets.is_empty() {
            return Err(query_error(format!("select the fields of {rt}List")));
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut referring = None;
        let mut count = None;
        for (name, value) in &field.arguments {
            let name = name.node.as_str();
            let value = self.argument(value).map_err(query_error)?;
            let param = search_name(name);
            match param.as_str() {
                "_reference" if target.is_some() => {
                    referring = Some(search_name(&scalar_text(name, &value)?));
                    continue;
                }
                "_reference" => {
                    return Err(query_error(
                        "_reference is for a list inside a resource (the resources that refer to it)",
                    ))
                }
                "_count" => {
                    let n = whole_number(name, &value)?;
                    if n == 0 || n > MAX_LIST {
                        return Err(Fail::Stop(Refusal::Limit(format!(
                            "_count must be 1 to {MAX_LIST}"
                        ))));
                    }
                    count = Some(n);
                    continue;
                }
                "_offset" | "_page" => {
                    return Err(query_error(
                        "paging is not supported: a list is its search's first page (narrow it, or set _count)",
                    ))
                }
                p if p.starts_with("_include")
                    || p.starts_with("_revinclude")
                    || matches!(p, "_summary" | "_elements" | "_total" | "_format" | "_contained") =>
                {
                    return Err(query_error(format!(
                        "{p} is not supported in a GraphQL list (select references' resource instead)"
                    )))
                }
                _ => {}
            }
            let values = match &value {
                ConstValue::List(items) => items
                    .iter()
                    .map(|v| scalar_text(name, v))
                    .collect::<Result<Vec<_>, _>>()?,
                one => vec![scalar_text(name, one)?],
            };
            pairs.extend(values.into_iter().map(|v| (param.clone(), v)));
        }
        if let Some(target) = target {
            let param = referring.ok_or_else(|| {
                query_error(format!(
                    "{rt}List inside a resource needs _reference: the search parameter of {rt} that refers to it"
                ))
            })?;
            pairs.push((param, target));
        }
        pairs.push(("_count".into(), count.unwrap_or(MAX_LIST).to_string()));
        let mut query = search_query::parse(rt, &pairs, true)
            .map_err(|e| Fail::Field(Cause::Store(StoreError::BadRequest(e.0))))?;
        query.total = Total::None;
        self.take_search()?;
        let page = self
            .store
            .search(self.ctx, &query)
            .await
            .map_err(store_fail)?;
        let mut out = Vec::with_capacity(page.matches.len());
        for (i, found) in page.matches.iter().enumerate() {
            self.take_resource()?;
            let body = body_of(found)?;
            let mut here = path.clone();
            here.push(Value::from(i));
            out.push(self.object(&body, &body, sets.clone(), here).await?);
        }
        Ok(Value::Array(out))
    }

    /// The fields `sets` select on `node`, an element of `resource` (or the resource itself).
    fn object<'a>(
        &'a mut self,
        node: &'a Map<String, Value>,
        resource: &'a Map<String, Value>,
        sets: Vec<&'q SelectionSet>,
        path: Vec<Value>,
    ) -> Boxed<'a, Result<Value, Refusal>>
    where
        'q: 'a,
    {
        Box::pin(async move {
            let rt = node.get("resourceType").and_then(Value::as_str);
            let groups = self.collect(&sets, rt);
            let mut out = Map::new();
            for (key, fields) in groups {
                let first = fields[0];
                let sets = selections(&fields);
                let mut here = path.clone();
                here.push(Value::String(key.clone()));
                self.spend(key.len() + 4)?;
                let answered = self
                    .field(node, resource, &first.node, sets, here.clone())
                    .await;
                let value = self.settle(answered, here, first.pos)?;
                out.insert(key, value);
            }
            Ok(Value::Object(out))
        })
    }

    /// One field of `node`.
    async fn field(
        &mut self,
        node: &Map<String, Value>,
        resource: &Map<String, Value>,
        field: &'q Field,
        sets: Vec<&'q SelectionSet>,
        path: Vec<Value>,
    ) -> Result<Value, Fail> {
        let name = field.name.node.as_str();
        if name == "__typename" {
            return Ok(node.get("resourceType").cloned().unwrap_or(Value::Null));
        }
        if name == "resource"
            && !node.contains_key("resource")
            && node.get("reference").is_some_and(Value::is_string)
        {
            return self.reference(node, resource, field, sets, path).await;
        }
        // Only the resource itself (never an element or a contained resource, whose id is
        // local) is what other resources refer to.
        let own = std::ptr::eq(node, resource) && is_resource(node);
        if let Some(rt) = name.strip_suffix("List").and_then(ResourceType::parse) {
            if own && !node.contains_key(name) {
                let target = match (node.get("resourceType"), node.get("id")) {
                    (Some(Value::String(t)), Some(Value::String(id))) => format!("{t}/{id}"),
                    _ => return Ok(Value::Null),
                };
                return self.list(rt, field, sets, path, Some(target)).await;
            }
        }
        if name
            .strip_suffix("Connection")
            .and_then(ResourceType::parse)
            .is_some()
            && !node.contains_key(name)
        {
            return Err(connection_unsupported());
        }
        let Some(value) = node.get(name) else {
            return Ok(Value::Null);
        };
        match value {
            Value::Array(items) => {
                let kept = self.filter(items, field)?;
                let mut out = Vec::with_capacity(kept.len());
                for (i, item) in kept.into_iter().enumerate() {
                    let mut here = path.clone();
                    here.push(Value::from(i));
                    out.push(self.value(name, item, resource, &sets, here).await?);
                }
                Ok(Value::Array(out))
            }
            one => {
                if !field.arguments.is_empty() {
                    return Err(query_error(format!(
                        "'{}' is not a list: only lists take arguments",
                        printable(name)
                    )));
                }
                self.value(name, one, resource, &sets, path).await
            }
        }
    }

    async fn value(
        &mut self,
        name: &str,
        value: &Value,
        resource: &Map<String, Value>,
        sets: &[&'q SelectionSet],
        path: Vec<Value>,
    ) -> Result<Value, Fail> {
        match value {
            Value::Object(element) => {
                if sets.is_empty() {
                    return Err(query_error(format!(
                        "'{}' has parts: select its fields",
                        printable(name)
                    )));
                }
                Ok(self.object(element, resource, sets.to_vec(), path).await?)
            }
            primitive => {
                if !sets.is_empty() {
                    return Err(query_error(format!(
                        "'{}' is a value: it has no fields to select",
                        printable(name)
                    )));
                }
                let size = match primitive {
                    Value::String(s) => s.len() + 2,
                    _ => 24,
                };
                self.spend(size)?;
                Ok(primitive.clone())
            }
        }
    }

    /// The items of a list that a field's arguments keep: `prop: value` keeps those whose
    /// `prop` reads `value`; then `_offset` and `_count`.
    fn filter<'v>(&self, items: &'v [Value], field: &Field) -> Result<Vec<&'v Value>, Fail> {
        let (mut offset, mut count) = (0, usize::MAX);
        let mut wanted = Vec::new();
        for (name, value) in &field.arguments {
            let name = name.node.as_str();
            let value = self.argument(value).map_err(query_error)?;
            match name {
                "_count" => count = whole_number(name, &value)?,
                "_offset" => offset = whole_number(name, &value)?,
                "fhirpath" => return Err(query_error("fhirpath arguments are not supported")),
                _ => wanted.push((name, scalar_text(name, &value)?)),
            }
        }
        Ok(items
            .iter()
            .filter(|item| {
                wanted
                    .iter()
                    .all(|(k, want)| item.get(*k).is_some_and(|have| matches_text(have, want)))
            })
            .skip(offset)
            .take(count)
            .collect())
    }

    /// `resource` on a Reference: the resource it names, read as the caller. A reference the
    /// caller cannot follow (missing, deleted, hidden, another server's, not of `type`) is
    /// `null`, all alike.
    async fn reference(
        &mut self,
        node: &Map<String, Value>,
        resource: &Map<String, Value>,
        field: &'q Field,
        sets: Vec<&'q SelectionSet>,
        path: Vec<Value>,
    ) -> Result<Value, Fail> {
        let mut wanted = None;
        for (name, value) in &field.arguments {
            let value = self.argument(value).map_err(query_error)?;
            match name.node.as_str() {
                "type" => {
                    let t = scalar_text("type", &value)?;
                    wanted = Some(ResourceType::parse(&t).ok_or_else(|| {
                        query_error(format!("'{}' is not an R4 resource type", printable(&t)))
                    })?);
                }
                "optional" => {}
                other => {
                    return Err(query_error(format!(
                        "resource takes a type, not '{}'",
                        printable(other)
                    )))
                }
            }
        }
        if sets.is_empty() {
            return Err(query_error("'resource' is a resource: select its fields"));
        }
        let Some(text) = node.get("reference").and_then(Value::as_str) else {
            return Ok(Value::Null);
        };
        let Ok(reference) = Reference::parse(text) else {
            return Ok(Value::Null);
        };
        match reference {
            Reference::Contained(id) => {
                let found = resource
                    .get("contained")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_object)
                    .find(|c| c.get("id").and_then(Value::as_str) == Some(id));
                match found {
                    Some(c)
                        if wanted.is_none_or(|w| {
                            c.get("resourceType").and_then(Value::as_str) == Some(w.as_str())
                        }) =>
                    {
                        Ok(self.object(c, resource, sets, path).await?)
                    }
                    _ => Ok(Value::Null),
                }
            }
            Reference::Resource {
                resource_type,
                id,
                version,
                base,
            } => {
                let elsewhere = base.is_some_and(|b| b.trim_end_matches('/') != self.base);
                if elsewhere || wanted.is_some_and(|w| w != resource_type) {
                    return Ok(Value::Null);
                }
                let Ok(id) = ResourceId::parse(id) else {
                    return Ok(Value::Null);
                };
                self.take_resource()?;
                let read = match version {
                    None => self.store.read(self.ctx, resource_type, &id).await,
                    Some(v) => match v.parse::<i64>() {
                        Ok(v) => self.store.vread(self.ctx, resource_type, &id, v).await,
                        Err(_) => return Ok(Value::Null),
                    },
                };
                match read {
                    Ok(stored) => {
                        let body = body_of(&stored)?;
                        Ok(self.object(&body, &body, sets, path).await?)
                    }
                    Err(e) if is_absent(&e) => Ok(Value::Null),
                    Err(e) => Err(store_fail(e)),
                }
            }
            _ => Ok(Value::Null),
        }
    }
}

/// The selections of fields merged under one key.
fn selections<'q>(fields: &[&'q Positioned<Field>]) -> Vec<&'q SelectionSet> {
    fields
        .iter()
        .map(|f| &f.node.selection_set.node)
        .filter(|s| !s.items.is_empty())
        .collect()
}

fn connection_unsupported() -> Fail {
    query_error("Connection types are not supported: ask for TypeList")
}
